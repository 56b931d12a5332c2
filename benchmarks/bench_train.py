"""Training speed: dtune's Decision Transformer against transformers' DecisionTransformerModel,
and the `small` MDDT against dtune 0.2's step and against `--compile` (torch.compile of the loss).

Same architecture size (classic DT: continuous actions, tanh head, tokens R, s, a), same batch
and context, same activation, same optimiser (torch's fused AdamW, what dtune trains with);
forward + backward + AdamW step, in fp32 and bf16 autocast. The compiled rows include no compile
time (warm-up steps run first; compiling takes about a minute).

The 0.2 reference of the small MDDT is today's model with 0.2's slow parts put back: torch's
Bernoulli dropout, GPT-2's tanh GELU, the final block run for every token (today it runs for the
tokens the loss reads) and torch's default (unfused) AdamW. It keeps the later single cast of the
attention input and the written-out attention, so the ratio is if anything understated.

    python benchmarks/bench_train.py [--embd 128 --layers 3 --heads 1 --batch 64 --context 20]
        [--activation gelu] [--no-compile]
"""

import argparse

import torch
from transformers import DecisionTransformerConfig, DecisionTransformerModel

from _common import race, timed
from dtune.models import GPTConfig, ModelConfig, build_model, preset
from dtune.models import backbone

HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--embd", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--context", type=int, default=20)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--activation", choices=sorted(HF_ACTIVATION), default="gelu",
                   help="MLP activation of both models (gelu: what dtune's presets use)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = p.parse_args()
    S, A, B, K = 17, 6, args.batch, args.context

    torch.manual_seed(0)
    states, actions = torch.randn(B, K, S), torch.rand(B, K, A) * 2 - 1
    rtg, rewards = torch.randn(B, K), torch.randn(B, K)
    timesteps = torch.randint(0, 900, (B, 1)) + torch.arange(K)
    mask = torch.ones(B, K, dtype=torch.bool)

    ours = build_model(ModelConfig(kind="dt", state_dim=S, act_dim=A, context_len=K, type_embedding=False,
                                   gpt=GPTConfig(n_layer=args.layers, n_head=args.heads, n_embd=args.embd, dropout=0.1,
                                                 activation=args.activation)))
    batch = {"states": states, "actions": actions, "action_mask": torch.ones(B, A, dtype=torch.bool), "rtg": rtg,
             "rewards": rewards, "timesteps": timesteps, "valid": mask}
    hf = DecisionTransformerModel(DecisionTransformerConfig(
        state_dim=S, act_dim=A, hidden_size=args.embd, n_layer=args.layers, n_head=args.heads, n_inner=4 * args.embd,
        activation_function=HF_ACTIVATION[args.activation], max_ep_len=1000, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1))


    def step_fn(model, loss_fn, bf16, fused=True):
        opt = torch.optim.AdamW(model.parameters(), 1e-4, fused=fused)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step


    def hf_loss():
        out = hf(states=states, actions=actions, rewards=rewards[..., None], returns_to_go=rtg[..., None],
                 timesteps=timesteps, attention_mask=mask.long())
        return ((out.action_preds.float() - actions) ** 2).mean()


    tokens = B * K * 3
    print(f"DT {args.layers} layers, {args.heads} head(s), width {args.embd}, {args.activation}; batch {B}, "
          f"context {K} ({tokens} tokens/step)")
    print(f"params: dtune {sum(p.numel() for p in ours.parameters())}, transformers {sum(p.numel() for p in hf.parameters())}")
    for bf16 in (False, True):
        t = race({"hf": step_fn(hf.train(), hf_loss, bf16), "ours": step_fn(ours.train(), lambda: ours.loss(batch)[0], bf16)},
                 repeat=args.steps)
        name = "bf16" if bf16 else "fp32"
        print(f"{name}: transformers {tokens / t['hf']:8.0f} tok/s ({1 / t['hf']:5.1f} steps/s) | "
              f"dtune {tokens / t['ours']:8.0f} tok/s ({1 / t['ours']:5.1f} steps/s) | "
              f"dtune/transformers x{t['hf'] / t['ours']:.2f}")

    # the small MDDT of the CPU studies (Meta-World + DMC layout: 154 state dims, 6 actions, K = 5)
    b, k = 64, 5
    mb = {"states": torch.randn(b, k, 154), "actions": torch.rand(b, k, 6) * 2 - 1,
          "action_mask": torch.ones(b, 6, dtype=torch.bool), "rtg": torch.randn(b, k), "rewards": torch.randn(b, k),
          "timesteps": torch.randint(0, 190, (b, 1)) + torch.arange(k), "valid": torch.ones(b, k, dtype=torch.bool)}
    mddt = build_model(preset("small", state_dim=154, act_dim=6)).train()
    old_cfg = preset("small", state_dim=154, act_dim=6)
    old_cfg.gpt.activation = "gelu_tanh"
    old = build_model(old_cfg).train()
    fast_dropout = backbone.dropout

    def with_dropout(fn, drop):
        def step():
            backbone.dropout = drop
            try:
                fn()
            finally:
                backbone.dropout = fast_dropout
        return step

    torch_dropout = lambda x, p, training: torch.nn.functional.dropout(x, p, training)  # noqa: E731
    sliced = old.backbone

    def every_token(tokens, valid, s, all_valid, routed, outputs, **kw):  # 0.2: the final block for all tokens
        return sliced(tokens, valid, s, all_valid, routed, **kw)[:, :, list(outputs)]

    old.backbone = every_token
    t = race({"0.2": with_dropout(step_fn(old, lambda: old.loss(mb)[0], True, fused=False), torch_dropout),
              "now": step_fn(mddt, lambda: mddt.loss(mb)[0], True)}, repeat=args.steps)
    t_old, t_eager = t["0.2"], t["now"]
    print(f"small MDDT, batch 64, bf16: 0.2's step {1 / t_old:5.1f} steps/s | now {1 / t_eager:5.1f} steps/s "
          f"| now/0.2 x{t_old / t_eager:.2f}")

    if args.no_compile:
        return
    compiled = torch.compile(lambda: ours.loss(batch)[0])
    t_hf = timed(step_fn(hf.train(), hf_loss, True), repeat=args.steps, warmup=3)
    t_c = timed(step_fn(ours.train(), compiled, True), repeat=args.steps, warmup=3)
    print(f"bf16, dtune --compile: {tokens / t_c:8.0f} tok/s ({1 / t_c:5.1f} steps/s) | dtune/transformers x{t_hf / t_c:.2f}")
    mddt_loss = torch.compile(lambda: mddt.loss(mb)[0])
    t_comp = timed(step_fn(mddt, mddt_loss, True), repeat=args.steps, warmup=3)
    print(f"small MDDT, batch 64, bf16: eager {1 / t_eager:5.1f} steps/s | --compile {1 / t_comp:5.1f} steps/s "
          f"(x{t_eager / t_comp:.2f})")


if __name__ == "__main__":  # spawned workers import this file: run only as a script
    main()
