"""Models: the GPT backbone and the Decision Transformers built on it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dtune.models.backbone import GPT, GPTConfig, KVCache

MODEL_KINDS = ("mddt", "dt")


@dataclass
class ModelConfig:
    """A Decision Transformer: which kind, its input sizes and its backbone."""

    kind: str = "mddt"
    """`mddt` (discretised per-dimension action tokens, cross-entropy) or `dt` (continuous
    actions, tanh head, MSE)."""
    state_dim: int = 154
    """Width of the (padded) state vector: the run's input layout sets it (154 is the L2M paper's
    Meta-World + DMC layout)."""
    act_dim: int = 6
    """Number of (padded) action dimensions (set from the run's input layout)."""
    context_len: int = 5
    """Timesteps of context K (the paper's MDDT uses 5, the classic DT 20)."""
    max_timestep: int = 1000
    """Size of the timestep-embedding table (longest episode)."""
    n_bins: int = 64
    """Action bins per dimension (mddt)."""
    type_embedding: bool = True
    """Add a learned token-type embedding (s, R, a^i, r) to every token."""
    embedding: str = "linear"
    """Return, state and action embeddings (`dt`): `linear`, or `mlp` (LaMo: Linear -> GELU ->
    Linear with the first layer's output added back)."""
    head: str = "tanh"
    """Action head (`dt`): `tanh` (Linear -> Tanh, the classic DT) or `mlp` (LaMo: Linear -> GELU
    -> Linear, no tanh)."""
    ln_before_timestep: bool = False
    """Normalise a token's embedding before its timestep embedding is added (LaMo's order) instead
    of after (the classic DT's)."""
    vocab_size: int = 0
    """Vocabulary of the language model whose token embedding (`lm_wte`) and head the model keeps
    for LaMo's auxiliary language loss (`dt`); 0: none."""
    tie_lm_head: bool = True
    """The language head shares the token embedding's weight (GPT-2, SmolLM2)."""
    state_clip: float | None = None
    """Bound on the z-scored states, in standard deviations (`state_mean`, `state_std`: the model's
    buffers); unset: not clipped (every model made before 2026-12-06)."""
    lm: str | None = None
    """The pre-trained language model the backbone was initialised from (a record; see
    `dtune.models.lamo`)."""
    gpt: GPTConfig = field(default_factory=GPTConfig)
    """Backbone size."""

    def __post_init__(self):
        if isinstance(self.gpt, dict):
            self.gpt = GPTConfig(**self.gpt)
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose one of {', '.join(MODEL_KINDS)}")
        for name, allowed in (("embedding", ("linear", "mlp")), ("head", ("tanh", "mlp"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.state_clip is not None and not self.state_clip > 0:
            raise ValueError(f"state_clip must be positive (or unset: no clipping), got {self.state_clip}")
        if self.kind == "mddt" and ((self.embedding, self.head) != ("linear", "tanh") or self.vocab_size):
            raise ValueError("embedding, head and language-model options are for `dt` models (the MDDT embeds "
                             "discrete action tokens)")

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=32, dropout=0.0, activation="gelu"),
    "small": GPTConfig(n_layer=3, n_head=4, n_embd=128, dropout=0.1, activation="gelu"),
    "paper": GPTConfig(n_layer=6, n_head=12, n_embd=768, dropout=0.1, activation="gelu"),
}
"""Backbone sizes: `tiny` for tests, `small` for CPU studies, `paper` (about 40M parameters
with the MDDT embeddings) for GPUs. They use the exact GELU (see `GPTConfig.activation`);
checkpoints written before that field existed keep GPT-2's tanh approximation."""


def preset(name: str, kind: str = "mddt", **overrides) -> ModelConfig:
    """The model config of a size preset (`tiny`, `small`, `paper`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    gpt = GPTConfig(**asdict(PRESETS[name]))
    ctx = {"mddt": 5, "dt": 20}[kind] if kind in MODEL_KINDS else 5
    return ModelConfig(kind=kind, gpt=gpt, **{"context_len": ctx, **overrides})


def build_model(cfg: ModelConfig):
    from dtune.models.dt import DecisionTransformer, MultiDomainDT

    return (MultiDomainDT if cfg.kind == "mddt" else DecisionTransformer)(cfg)


__all__ = ["GPT", "GPTConfig", "KVCache", "ModelConfig", "PRESETS", "preset", "build_model", "MODEL_KINDS"]
