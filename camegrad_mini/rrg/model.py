"""A compact report generator for IU X-Ray, readable top to bottom (nanoGPT-style).

The model has three parts, and the multi-task story of the book lives in how they share weights:

* **Encoder (shared by every task).** A small ResNet-style CNN trained from scratch runs over each
  of the two views of a study with the *same* weights; the feature maps become visual tokens
  (``h*w`` per view), get a learned view embedding and a learned 2-D position embedding, and pass
  through a few pre-LN Transformer encoder layers (Vaswani et al. 2017). No pretrained weights are
  used by default: every pretrained CNN in reach downloads its weights at run time (see the
  design notes), and the book must run offline.
* **Report decoder (task 0, report generation).** A few pre-LN Transformer decoder blocks over
  the report tokens: causal self-attention, cross-attention to the visual tokens, an MLP; the
  output projection is tied to the token embedding (as in nanoGPT). Loss: token NLL.
* **Classification head (task 1, the "clinical constraint").** Mean-pooled visual tokens -> MLP ->
  14 logits, one per CheXpert observation; loss: binary cross-entropy (positive or uncertain = 1,
  the paper's convention). The paper's trainer weights this task by 4.
* **Diagnosis prompts (optional, ``diagnosis_prompt=True``).** Report generators trained on small,
  mostly normal data learn to write the normal template and ignore the image even when their
  encoder separates the findings (the classification head of the same model can reach AUROC near
  1 while every generated report is the same). The remedy follows PromptMRG (Jin et al., AAAI
  2024): the diagnosis drives the text. For each observation k a prompt token
  ``p_k * pos_k + (1 - p_k) * neg_k`` (two learned vectors per observation) is appended to the
  visual tokens the decoder cross-attends to, where ``p_k`` is the classifier's probability,
  **detached**: the report loss does not train the classifier through the prompts, so both
  tasks still reach the shared encoder only through their own paths and their gradients there can
  still agree or conflict. In training, ``p`` may be the labels instead (teacher forcing of the
  diagnosis, :meth:`ReportGenerator.losses`' ``prompt_labels``); at test time it is always the
  classifier's prediction.
* **Alignment head (optional task 2).** Image and text projections and a symmetric InfoNCE loss.
  The text side is a bag of words over the *shared* token embedding, so the alignment task
  touches the encoder and the embedding but never sees the image through the decoder (which
  would make the contrastive task trivial).

Only the encoder (and, with alignment, the token embedding) is reached by more than one task, so
gradient conflict between tasks can only happen there: this is where the book measures it.

Sizes: ``ModelConfig.preset("full", vocab)`` has about 7 M parameters (half-width ResNet-18,
d=256, one encoder and three decoder layers); ``"tiny"`` has about 0.1 M (most of it the token
embedding) for CPU tests and the CPU chapter. The notes in ``shared/design/rrg-notes.md`` section 8
motivate these choices.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ModelConfig", "ReportGenerator", "ModelOutput", "PRESETS"]

# Preset sizes. "full" follows rrg-notes section 8 (about 7 M parameters at a ~760-word vocabulary);
# "small" is a mid-size CPU configuration; "tiny" is for unit tests and the CPU chapter.
PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(widths=(32, 64, 128, 256), blocks=(2, 2, 2, 2), d_model=256, n_heads=8,
                 n_enc_layers=1, n_dec_layers=3, d_ff=1024, dropout=0.1),
    "small": dict(widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), d_model=128, n_heads=4,
                  n_enc_layers=1, n_dec_layers=2, d_ff=512, dropout=0.1),
    "tiny": dict(widths=(8, 16, 32), blocks=(1, 1, 1), d_model=48, n_heads=4,
                 n_enc_layers=1, n_dec_layers=1, d_ff=96, dropout=0.0),
}


@dataclass(frozen=True)
class ModelConfig:
    """Every size and vocabulary fact the model needs; validated on construction.

    ``pad_id``, ``bos_id`` and ``eos_id`` come from the tokenizer (they may coincide, as in R2Gen,
    where id 0 plays all three roles: the training targets therefore mark padding with -100
    rather than by token id).
    """

    vocab_size: int
    pad_id: int = 0
    bos_id: int = 0
    eos_id: int = 0
    n_obs: int = 14
    image_size: int = 128
    n_views: int = 2
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    d_model: int = 256
    n_heads: int = 8
    n_enc_layers: int = 1
    n_dec_layers: int = 3
    d_ff: int = 1024
    max_len: int = 60
    dropout: float = 0.1
    align_dim: int = 0  # 0: no alignment head (the paper's trainer has two tasks)
    # Diagnosis prompts: the decoder also attends to one token per observation, built from the
    # classifier's detached probability (or, in training, the label). The book's choice; see the
    # module docstring.
    diagnosis_prompt: bool = False
    # > 0: the prompts carry the hard diagnosis (probability >= threshold) rather than the
    # probability, the same 0/1 values the labels give in training
    prompt_threshold: float = 0.0
    pretrained_encoder: bool = False  # ImageNet ResNet-18 via torchvision; downloads, so off

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.vocab_size >= 4, f"vocab_size must be >= 4, got {self.vocab_size}")
        for name in ("pad_id", "bos_id", "eos_id"):
            v = getattr(self, name)
            need(0 <= v < self.vocab_size, f"{name}={v} is outside the vocabulary [0, {self.vocab_size})")
        need(self.n_obs >= 1, f"n_obs must be >= 1, got {self.n_obs}")
        need(self.n_views >= 1, f"n_views must be >= 1, got {self.n_views}")
        need(len(self.widths) >= 1 and len(self.widths) == len(self.blocks),
             f"widths {self.widths} and blocks {self.blocks} must be non-empty and of equal length")
        need(all(w >= 4 and w % 4 == 0 for w in self.widths), f"widths must be multiples of 4, got {self.widths}")
        need(all(b >= 1 for b in self.blocks), f"blocks must be >= 1 per stage, got {self.blocks}")
        stride = 4 * 2 ** (len(self.widths) - 1)
        need(self.image_size >= stride and self.image_size % stride == 0,
             f"image_size={self.image_size} must be a positive multiple of the CNN stride {stride}")
        need(self.d_model % self.n_heads == 0,
             f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        need(self.n_enc_layers >= 0 and self.n_dec_layers >= 1,
             f"need n_enc_layers >= 0 and n_dec_layers >= 1, got {self.n_enc_layers}, {self.n_dec_layers}")
        need(self.d_ff >= 1, f"d_ff must be >= 1, got {self.d_ff}")
        need(self.max_len >= 2, f"max_len must be >= 2, got {self.max_len}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.align_dim >= 0, f"align_dim must be >= 0, got {self.align_dim}")
        need(0.0 <= self.prompt_threshold < 1.0, f"prompt_threshold must be in [0, 1), got {self.prompt_threshold}")

    @classmethod
    def preset(cls, name: str, vocab_size: int, **overrides: Any) -> "ModelConfig":
        """A named size (``"full"``, ``"small"``, ``"tiny"``) with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = {**PRESETS[name], **overrides}
        return cls(vocab_size=vocab_size, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"], d["blocks"] = list(self.widths), list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        d["widths"], d["blocks"] = tuple(d["widths"]), tuple(d["blocks"])
        return cls(**d)


@dataclass
class ModelOutput:
    """What one teacher-forced forward pass returns."""

    logits: torch.Tensor  # [B, T, V] next-token logits
    cls_logits: torch.Tensor  # [B, n_obs]
    memory: torch.Tensor  # [B, N, d] visual tokens
    img_emb: torch.Tensor | None = None  # [B, align_dim], L2-normalised
    txt_emb: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Encoder: a half-width ResNet-18 (He et al. 2016), GroupNorm instead of BatchNorm so that the
# statistics do not depend on the batch (the per-task backward passes and the short CPU runs
# both behave the same in train and eval mode).
# --------------------------------------------------------------------------------------------

def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(8, c // 4), num_channels=c)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet's BasicBlock)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.n1 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.n2 = _norm(c_out)
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.n1(self.conv1(x)))
        return F.relu(self.n2(self.conv2(h)) + self.skip(x))


class ViewCNN(nn.Module):
    """Grayscale view [B, 1, S, S] -> feature map [B, widths[-1], S/stride, S/stride]."""

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 7, 2, 3, bias=False), _norm(widths[0]),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, c = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(c, w, stride=2 if (i > 0 and j == 0) else 1))
                c = w
        self.stages = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class PretrainedResNet18(nn.Module):
    """Optional ImageNet ResNet-18 trunk (torchvision); its weights are *downloaded*, so off by default."""

    def __init__(self) -> None:
        super().__init__()
        try:
            import torchvision
        except ImportError as e:  # pragma: no cover - depends on the reader's machine
            raise ImportError("pretrained_encoder=True needs torchvision (and internet access to "
                              "fetch the ImageNet weights); install it or keep the default False") from e
        net = torchvision.models.resnet18(weights="IMAGENET1K_V1")
        self.trunk = nn.Sequential(*list(net.children())[:-2])
        self.out_channels = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        return self.trunk(x.expand(-1, 3, -1, -1))


# --------------------------------------------------------------------------------------------
# Transformer blocks (pre-LN, as in GPT-2/nanoGPT).
# --------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention.

    ``forward`` is the teacher-forced pass. Decoding with a key/value cache uses the two halves
    separately: :meth:`keys_values` projects a source once (the memory, or one new token) and
    :meth:`attend` lets new queries attend to keys/values that were computed earlier.
    """

    def __init__(self, d: int, n_heads: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.resid_drop = nn.Dropout(dropout)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, n_heads, T, D / n_heads]."""
        B, T, D = t.shape
        return t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)

    def keys_values(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``src`` [B, S, D], each [B, n_heads, S, D / n_heads]."""
        k, v = self.kv(src).split(src.shape[-1], dim=-1)
        return self._heads(k), self._heads(v)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """Queries from ``x`` [B, T, D] attend to the given keys/values; output [B, T, D]."""
        B, T, D = x.shape
        y = F.scaled_dot_product_attention(self._heads(self.q(x)), k, v, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        k, v = self.keys_values(x if context is None else context)
        return self.attend(x, k, v, causal=self.causal and context is None)


class MLP(nn.Module):
    def __init__(self, d: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d), Attention(d, n_heads, dropout, causal=False)
        self.ln2, self.mlp = nn.LayerNorm(d), MLP(d, d_ff, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.self_attn = nn.LayerNorm(d), Attention(d, n_heads, dropout, causal=True)
        self.ln2, self.cross_attn = nn.LayerNorm(d), Attention(d, n_heads, dropout, causal=False)
        self.ln3, self.mlp = nn.LayerNorm(d), MLP(d, d_ff, dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.ln1(x))
        x = x + self.cross_attn(self.ln2(x), memory)
        return x + self.mlp(self.ln3(x))

    def new_cache(self, memory: torch.Tensor) -> dict[str, torch.Tensor]:
        """An empty key/value cache for decoding against ``memory`` [B, N, d].

        The cross-attention keys/values depend only on the memory, so they are computed here,
        once per study, instead of at every step; the self-attention ones start empty.
        """
        xk, xv = self.cross_attn.keys_values(memory)
        empty = xk[:, :, :0]
        return {"k": empty, "v": empty, "xk": xk, "xv": xv}

    def step(self, x: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """The block on the newest token only, ``x`` [B, 1, d], updating ``cache`` in place.

        Same arithmetic as :meth:`forward` at the last position: the new token's keys/values are
        appended to the cache and its query attends to all of them. No causal mask is needed,
        since every cached position precedes (or is) the new one.
        """
        h = self.ln1(x)
        k, v = self.self_attn.keys_values(h)
        cache["k"], cache["v"] = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
        x = x + self.self_attn.attend(h, cache["k"], cache["v"])
        x = x + self.cross_attn.attend(self.ln2(x), cache["xk"], cache["xv"])
        return x + self.mlp(self.ln3(x))


# --------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------

class ReportGenerator(nn.Module):
    """Two-view chest X-ray study -> report tokens + 14 observation logits (+ alignment embeddings).

    Images enter as the uint8 cache stores them, ``[B, n_views, S, S]``; the model scales them to
    roughly zero mean and unit variance itself, so the cache can stay uint8 on the device.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.d_model
        self.cnn: nn.Module = PretrainedResNet18() if cfg.pretrained_encoder else ViewCNN(cfg.widths, cfg.blocks)
        self.patch_proj = nn.Linear(self.cnn.out_channels, d)
        grid = (cfg.image_size // (4 * 2 ** (len(cfg.widths) - 1)) if not cfg.pretrained_encoder
                else cfg.image_size // 32)
        self.grid = grid
        self.view_emb = nn.Parameter(torch.zeros(cfg.n_views, 1, d))
        self.pos2d = nn.Parameter(torch.zeros(1, grid * grid, d))
        self.encoder = nn.ModuleList(EncoderBlock(d, cfg.n_heads, cfg.d_ff, cfg.dropout)
                                     for _ in range(cfg.n_enc_layers))
        self.enc_ln = nn.LayerNorm(d)

        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.max_len + 1, d))
        self.drop = nn.Dropout(cfg.dropout)
        self.decoder = nn.ModuleList(DecoderBlock(d, cfg.n_heads, cfg.d_ff, cfg.dropout)
                                     for _ in range(cfg.n_dec_layers))
        self.dec_ln = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying (nanoGPT)

        self.cls_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.n_obs))
        if cfg.diagnosis_prompt:
            self.dx_emb = nn.Parameter(torch.zeros(2, cfg.n_obs, d))  # [negative|positive, observation, d]
        if cfg.align_dim > 0:
            self.img_proj = nn.Linear(d, cfg.align_dim)
            self.txt_proj = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.align_dim))
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._init_weights()

    # -- initialisation: GPT-2 style normal(0, 0.02) for linear/embedding layers ------------------
    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, nn.Conv2d) and not name.startswith("cnn.trunk"):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.pos2d, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.view_emb, std=0.02)
        if self.config.diagnosis_prompt:
            nn.init.normal_(self.dx_emb, std=0.02)

    def num_parameters(self) -> int:
        """Distinct trainable parameters (the tied embedding is counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names by the tasks that reach them: the encoder is shared by all tasks."""
        groups: dict[str, list[str]] = {"encoder (shared)": [], "decoder (report)": [],
                                        "cls_head (classification)": [], "align (alignment)": []}
        for n, _ in self.named_parameters():
            if n.startswith(("cnn.", "patch_proj", "view_emb", "pos2d", "encoder.", "enc_ln")):
                groups["encoder (shared)"].append(n)
            elif n.startswith("cls_head"):
                groups["cls_head (classification)"].append(n)
            elif n.startswith(("img_proj", "txt_proj", "logit_scale")):
                groups["align (alignment)"].append(n)
            else:
                groups["decoder (report)"].append(n)
        return groups

    # -- forward pieces ---------------------------------------------------------------------------
    @staticmethod
    def normalise(images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] -> float, roughly zero mean and unit variance for radiographs."""
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        return (images - 0.5) / 0.25

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, V, S, S] (uint8 or float in [0, 1]) -> visual tokens [B, V*grid*grid, d]."""
        cfg = self.config
        if images.dim() != 4 or images.shape[1] != cfg.n_views:
            raise ValueError(f"images must be [B, {cfg.n_views}, S, S], got {tuple(images.shape)}")
        if images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size:
            raise ValueError(f"images must be {cfg.image_size}x{cfg.image_size}, got {tuple(images.shape[-2:])}")
        B, V, S, _ = images.shape
        x = self.normalise(images).reshape(B * V, 1, S, S)
        f = self.cnn(x)  # [B*V, C, g, g]
        tokens = self.patch_proj(f.flatten(2).transpose(1, 2))  # [B*V, g*g, d]
        tokens = tokens.view(B, V, -1, tokens.shape[-1]) + self.pos2d.unsqueeze(0) + self.view_emb.unsqueeze(0)
        h = tokens.reshape(B, V * tokens.shape[2], -1)
        for blk in self.encoder:
            h = blk(h)
        return self.enc_ln(h)

    def decode(self, tokens: torch.Tensor, memory: torch.Tensor, return_hidden: bool = False):
        """Teacher-forced decoder: token ids [B, T] -> logits [B, T, V] (and hidden states)."""
        T = tokens.shape[1]
        if T > self.config.max_len + 1:
            raise ValueError(f"token sequence of length {T} exceeds max_len+1={self.config.max_len + 1}")
        x = self.drop(self.tok_emb(tokens) + self.pos_emb[:, :T])
        for blk in self.decoder:
            x = blk(x, memory)
        x = self.dec_ln(x)
        logits = self.lm_head(x)
        return (logits, x) if return_hidden else logits

    def classify(self, memory: torch.Tensor) -> torch.Tensor:
        return self.cls_head(memory.mean(dim=1))

    def decoder_memory(self, memory: torch.Tensor, cls_logits: torch.Tensor,
                       prompt_probs: torch.Tensor | None = None) -> torch.Tensor:
        """What the decoder cross-attends to: the visual tokens, plus one diagnosis prompt per
        observation when ``diagnosis_prompt`` is on. The prompts use ``prompt_probs`` if given
        (labels in training; NaN rows fall back to the prediction), else the classifier's
        probabilities; either way detached."""
        if not self.config.diagnosis_prompt:
            return memory
        p = torch.sigmoid(cls_logits.float())
        if self.config.prompt_threshold > 0:
            p = (p >= self.config.prompt_threshold).float()
        if prompt_probs is not None:
            p = torch.where(torch.isnan(prompt_probs), p, prompt_probs.float())
        p = p.detach().to(memory.dtype).unsqueeze(-1)  # [B, n_obs, 1]
        neg, pos = self.dx_emb[0].to(memory.dtype), self.dx_emb[1].to(memory.dtype)
        return torch.cat([memory, p * pos + (1 - p) * neg], dim=1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, text_mask: torch.Tensor | None = None,
                prompt_probs: torch.Tensor | None = None) -> ModelOutput:
        """Teacher-forced pass. ``tokens`` are decoder inputs (start with BOS); ``text_mask`` marks
        real (non-padding) input positions and is needed only for the alignment head;
        ``prompt_probs`` [B, n_obs] replaces the classifier's probabilities in the diagnosis prompts."""
        memory = self.encode(images)
        cls_logits = self.classify(memory)
        logits = self.decode(tokens, self.decoder_memory(memory, cls_logits, prompt_probs))
        out = ModelOutput(logits=logits, cls_logits=cls_logits, memory=memory)
        if self.config.align_dim > 0:
            mask = torch.ones_like(tokens, dtype=torch.bool) if text_mask is None else text_mask
            m = mask.unsqueeze(-1).to(memory.dtype)
            bag = (self.tok_emb(tokens) * m).sum(1) / m.sum(1).clamp_min(1.0)
            out.img_emb = F.normalize(self.img_proj(memory.mean(1)), dim=-1)
            out.txt_emb = F.normalize(self.txt_proj(bag), dim=-1)
        return out

    # -- losses -----------------------------------------------------------------------------------
    def losses(self, images: torch.Tensor, tokens: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
               label_smoothing: float = 0.0, cls_pos_weight: torch.Tensor | None = None,
               prompt_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The per-task losses, *unweighted* (the optimizer wrapper applies the task weights).

        * ``report``: mean token NLL over real target positions (``targets`` = -100 at padding);
        * ``cls``: BCE over the 14 observations (optionally ``pos_weight`` for rare labels);
        * ``align`` (if the head exists): symmetric InfoNCE over the batch (CLIP's loss).

        ``prompt_labels`` (0/1, [B, n_obs]) replace the classifier's predictions in the diagnosis
        prompts (teacher forcing of the diagnosis); None uses the predictions.
        """
        probs = None if prompt_labels is None else prompt_labels.float()
        out = self(images, tokens, text_mask=targets != -100, prompt_probs=probs)
        report = F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                                 label_smoothing=label_smoothing)
        cls = F.binary_cross_entropy_with_logits(out.cls_logits.float(), labels.float(), pos_weight=cls_pos_weight)
        result = {"report": report, "cls": cls}
        if out.img_emb is not None:
            scale = self.logit_scale.exp().clamp(max=100.0)
            sim = scale * out.img_emb.float() @ out.txt_emb.float().t()
            idx = torch.arange(sim.shape[0], device=sim.device)
            result["align"] = 0.5 * (F.cross_entropy(sim, idx) + F.cross_entropy(sim.t(), idx))
        return result

    # -- decoding ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_len: int | None = None, beam_size: int = 1,
                 no_repeat_ngram: int = 0, length_penalty: float = 0.0,
                 use_cache: bool = True, *, max_run: int = 0, min_len: int = 0) -> list[list[int]]:
        """Decode reports: greedy (``beam_size=1``) or beam search, batched over the studies.

        Returns token ids per study without BOS and EOS (at most ``max_len`` of them; the config's
        ``max_len`` by default).

        * ``no_repeat_ngram=n > 0``: a token that would complete an n-gram already present in
          that hypothesis gets probability zero (R2Gen-style decoding; greedy too). The n-grams
          are over the generated tokens only (not BOS). 0 (default) turns the rule off.
        * ``length_penalty=a``: beam search ranks hypotheses by ``sum of log-probs / length**a``,
          length counting the generated tokens including EOS (fairseq's convention). The default
          0 ranks by the plain sum; 1 ranks by the mean log-prob per token. Greedy ignores it.
        * ``max_run=r > 0``: no token more than ``r`` times in a row (``max_run=2`` forbids
          "the the the"; IU reports themselves repeat the anonymisation token "xxxx", and a small
          decoder copies such runs). 0 turns the rule off.
        * ``min_len=m > 0``: EOS is forbidden before ``m`` generated tokens (fairseq's ``--min-len``):
          a short template pays BLEU's brevity penalty however right its content. 0: off.
        * ``use_cache=False``: re-run the decoder over the whole prefix at every step instead of
          keeping keys/values; the slow reference path, kept for testing the cache.

        Beam search keeps finished hypotheses among the ``beam_size`` best and stops when all of
        them have finished (or after ``max_len`` steps); the best-ranked one is returned.
        """
        max_len = self.config.max_len if max_len is None else max_len
        if not 1 <= max_len <= self.config.max_len:
            raise ValueError(f"max_len must be in [1, {self.config.max_len}], got {max_len}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        for name, v in (("no_repeat_ngram", no_repeat_ngram), ("max_run", max_run), ("min_len", min_len)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        visual = self.encode(images)
        memory = self.decoder_memory(visual, self.classify(visual))
        if beam_size == 1:
            return self._greedy(memory, max_len, no_repeat_ngram, use_cache, max_run=max_run, min_len=min_len)
        return self._beam(memory, max_len, beam_size, no_repeat_ngram, length_penalty, use_cache,
                          max_run=max_run, min_len=min_len)

    def _new_cache(self, memory: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """One key/value cache per decoder block (see :meth:`DecoderBlock.new_cache`)."""
        return [blk.new_cache(memory) for blk in self._decoder_blocks()]

    def _decoder_blocks(self) -> list[DecoderBlock]:
        """The decoder blocks, typed as such (iterating an ``nn.ModuleList`` gives plain ``nn.Module``)."""
        return cast("list[DecoderBlock]", list(self.decoder))

    def _next_logits(self, seq: torch.Tensor, memory: torch.Tensor,
                     cache: list[dict[str, torch.Tensor]] | None) -> torch.Tensor:
        """Logits [B, V] of the token after ``seq`` [B, t] (which starts with BOS).

        Without a cache, the teacher-forced decoder runs over the whole prefix and all but the
        last position are thrown away. With one, only the newest token goes through the blocks
        (its keys/values join the cache): the cache must hold exactly ``seq[:, :-1]``.
        """
        if cache is None:
            return self.decode(seq, memory)[:, -1]
        t = seq.shape[1] - 1  # position of the newest token
        x = self.drop(self.tok_emb(seq[:, -1:]) + self.pos_emb[:, t:t + 1])
        for blk, c in zip(self._decoder_blocks(), cache, strict=True):
            x = blk.step(x, c)
        return self.lm_head(self.dec_ln(x))[:, -1]

    @staticmethod
    def _ban_repeats(logits: torch.Tensor, generated: torch.Tensor, n: int) -> torch.Tensor:
        """``logits`` [B, V] with -inf for every token that would complete an n-gram already in
        the same row of ``generated`` [B, L] (the tokens so far, without BOS)."""
        B, L = generated.shape
        if n <= 0 or L < n:  # the rule is off, or no complete n-gram exists yet
            return logits
        grams = generated.unfold(1, n, 1)  # [B, L-n+1, n]: every n-gram so far
        prefix = generated[:, L - n + 1:]  # the last n-1 tokens (none when n = 1)
        hit = (grams[..., :-1] == prefix[:, None]).all(-1)  # n-grams that the next token would repeat
        # scatter_add, not scatter: a token may be hit by several n-grams, and any hit bans it
        banned = torch.zeros(logits.shape, dtype=torch.int32, device=logits.device)
        banned.scatter_add_(1, grams[..., -1], hit.int())
        return logits.masked_fill(banned > 0, float("-inf"))

    def _constrain(self, logits: torch.Tensor, generated: torch.Tensor, no_repeat_ngram: int,
                   max_run: int, min_len: int) -> torch.Tensor:
        """Every decoding rule of :meth:`generate` applied to ``logits`` [B, V] (banned: -inf),
        given the tokens generated so far [B, L] without BOS."""
        logits = self._ban_repeats(logits, generated, no_repeat_ngram)
        L = generated.shape[1]
        if max_run > 0 and L >= max_run:
            last = generated[:, L - max_run:]
            same = (last == last[:, -1:]).all(-1)  # the row ends in a run of max_run equal tokens
            ban = torch.zeros_like(logits, dtype=torch.bool)
            ban[same, last[same, -1]] = True
            logits = logits.masked_fill(ban, float("-inf"))
        if L < min_len:
            logits = logits.clone()
            logits[:, self.config.eos_id] = float("-inf")
        return logits

    def _greedy(self, memory: torch.Tensor, max_len: int, no_repeat_ngram: int = 0,
                use_cache: bool = True, *, max_run: int = 0, min_len: int = 0) -> list[list[int]]:
        cfg, B = self.config, memory.shape[0]
        seq = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(B, dtype=torch.bool, device=memory.device)
        cache = self._new_cache(memory) if use_cache else None
        for _ in range(max_len):
            logits = self._constrain(self._next_logits(seq, memory, cache), seq[:, 1:], no_repeat_ngram, max_run,
                                     min_len)
            nxt = logits.argmax(-1)
            # finished rows keep producing EOS, so that the batch stays rectangular
            nxt = torch.where(done, torch.full_like(nxt, cfg.eos_id), nxt)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            done |= nxt == cfg.eos_id
            if bool(done.all()):
                break
        return [self._strip(row) for row in seq[:, 1:].tolist()]

    def _beam(self, memory: torch.Tensor, max_len: int, k: int, no_repeat_ngram: int = 0,
              length_penalty: float = 0.0, use_cache: bool = True, *, max_run: int = 0,
              min_len: int = 0) -> list[list[int]]:
        """Beam search over all studies at once: row ``i * k + j`` holds hypothesis j of study i."""
        cfg, B, V = self.config, memory.shape[0], self.config.vocab_size
        dev = memory.device
        cache = None
        if use_cache:  # cross-attention keys/values once per study, then shared by its k hypotheses
            cache = [{name: t.repeat_interleave(k, dim=0) for name, t in c.items()} for c in self._new_cache(memory)]
        memory = memory.repeat_interleave(k, dim=0)  # [B*k, N, d], for the uncached path
        seq = torch.full((B * k, 1), cfg.bos_id, dtype=torch.long, device=dev)
        # Summed log-probs [B, k]. At the start there is one hypothesis (BOS) per study, not k
        # copies of it: the others get -inf so that the first step expands BOS into k tokens.
        score = torch.zeros(B, k, device=dev)
        score[:, 1:] = float("-inf")
        length = torch.zeros(B, k, device=dev)  # generated tokens, EOS included (length penalty)
        done = torch.zeros(B, k, dtype=torch.bool, device=dev)
        # A finished hypothesis is carried over unchanged: its only continuation is EOS, at no cost.
        carry = torch.full((V,), float("-inf"), device=dev)
        carry[cfg.eos_id] = 0.0
        first_row = torch.arange(B, device=dev)[:, None] * k  # row of each study's hypothesis 0
        for t in range(1, max_len + 1):
            # the ban comes after the softmax: banned tokens drop out, the others keep the model's log-probs
            logp = self._next_logits(seq, memory, cache).float().log_softmax(-1)
            logp = self._constrain(logp, seq[:, 1:], no_repeat_ngram, max_run, min_len)
            logp = torch.where(done[..., None], carry, logp.view(B, k, V))
            total = score[..., None] + logp  # [B, k, V]: every one-token extension of every hypothesis
            cand_len = torch.where(done, length, torch.full_like(length, t))
            rank = total / cand_len[..., None] ** length_penalty if length_penalty else total
            # The k best of the k*V candidates per study. A hypothesis contributes at most k of
            # them, so this equals taking the top k per hypothesis first (as a list version would).
            best = rank.view(B, k * V).topk(k, dim=-1).indices  # sorted: hypothesis 0 ranks best
            src, tok = best // V, best % V  # which hypothesis each survivor extends, and with what
            score = total.view(B, k * V).gather(1, best)
            length = cand_len.gather(1, src)
            done = done.gather(1, src) | (tok == cfg.eos_id)
            rows = (first_row + src).view(-1)
            seq = torch.cat([seq[rows], tok.view(-1, 1)], dim=1)
            if cache is not None:
                # The self-attention keys/values follow their hypotheses; the cross-attention ones
                # are the same for all hypotheses of a study, and `rows` stays within the study.
                for c in cache:
                    c["k"], c["v"] = c["k"][rows], c["v"][rows]
            if bool(done.all()):
                break
        return [self._strip(seq[i * k, 1:].tolist()) for i in range(B)]

    def _strip(self, ids: list[int]) -> list[int]:
        eos = self.config.eos_id
        return ids[: ids.index(eos)] if eos in ids else ids


def count_parameters(config: ModelConfig) -> int:
    """Parameters of a model with this config, without keeping the model."""
    return ReportGenerator(config).num_parameters()


def with_overrides(config: ModelConfig, **kw: Any) -> ModelConfig:
    """A copy of ``config`` with some fields changed (validated again)."""
    return replace(config, **kw)
