"""`dtune` with the MDDT's action decoding changed from per-dimension argmax to the bin nearest the
expected value of the (temperature-scaled) token distribution; a diagnostic, not a feature.
Usage: python mean_decoding_eval.py TEMPERATURE evaluate --checkpoint RUN ...  (any dtune command)"""
import sys, torch
import dtune.eval.agents as agents
class MeanHead(torch.nn.Module):
    def __init__(self, head, temp, n_bins):
        super().__init__(); self.head, self.temp, self.n_bins = head, temp, n_bins
    def forward(self, h):
        logits = self.head(h).float()
        p = torch.softmax(logits[..., : self.n_bins] / self.temp, -1)
        e = (p * torch.arange(float(self.n_bins))).sum(-1).round().long()
        out = torch.full_like(logits, -1e4); out.scatter_(-1, e[..., None], 0.0)
        return out.to(h.dtype)
init = agents.DTAgent.__init__
def patched(self, model, *a, **k):
    if hasattr(model, "tokenizer") and not isinstance(model.head, MeanHead):
        model.head = MeanHead(model.head, float(sys.argv[1]), model.tokenizer.n_bins)
    init(self, model, *a, **k)
agents.DTAgent.__init__ = patched
from dtune.cli import main
sys.exit(main(sys.argv[2:]))
