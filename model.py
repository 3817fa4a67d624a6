"""MAE (He et al., 2022) on timm ViT parts, and a ViT classifier that reuses its encoder.

The encoder is a real `timm` VisionTransformer (without a head), so its state dict is the
state dict of a timm ViT: a pretrained encoder loads into `timm.create_model(...)` unchanged.
"""
from dataclasses import asdict, dataclass, fields
from functools import partial

import numpy as np
import torch
import torch.nn as nn
from einops import rearrange
from timm.models.vision_transformer import Block, VisionTransformer

LayerNorm = partial(nn.LayerNorm, eps=1e-6)  # the eps timm and official MAE use for ViTs
MLP_RATIO = 4.0
BN_EPS = 1e-6  # the linear probe's BatchNorm (export.py folds it into a linear head)
TOKEN_INIT_STD = 0.02  # MAE's init for cls and mask tokens (and learned position embeddings)
POS_EMBEDS = ("learned", "sincos")
POOLS = ("cls", "mean")
HEADS = ("linear", "bn_linear")


@dataclass
class MAEConfig:
    image_size: int = 32  # input height = width, in pixels
    patch_size: int = 2  # side of a square patch; L = (image_size / patch_size) ** 2
    in_chans: int = 3  # 3 for RGB, 1 for grey images
    emb_dim: int = 192  # encoder width (ViT-Tiny: 192)
    encoder_layer: int = 12  # encoder blocks
    encoder_head: int = 3  # encoder attention heads
    decoder_dim: int = 192  # decoder width
    decoder_layer: int = 4  # decoder blocks
    decoder_head: int | None = None  # None: max(1, decoder_dim // 64)
    mask_ratio: float = 0.75  # fraction of patches removed before the encoder
    norm_pix_loss: bool = False  # target = per-patch normalised pixels (the paper's best)
    pos_embed: str = "learned"  # 'learned' or fixed 2-D 'sincos'

    def __post_init__(self):
        if self.decoder_head is None:
            self.decoder_head = max(1, self.decoder_dim // 64)
        validate_vit(self.image_size, self.patch_size, self.in_chans, self.emb_dim,
                     self.encoder_layer, self.encoder_head, self.pos_embed)
        _check_positive(decoder_dim=self.decoder_dim, decoder_layer=self.decoder_layer,
                        decoder_head=self.decoder_head)
        _check_divisible("decoder_dim", self.decoder_dim, "decoder_head", self.decoder_head)
        if self.pos_embed == "sincos" and self.decoder_dim % 4:
            raise ValueError(f"pos_embed='sincos' needs decoder_dim divisible by 4, got "
                             f"{self.decoder_dim}")
        check_mask_ratio(self.mask_ratio)


@dataclass
class ClassifierConfig:
    image_size: int = 32
    patch_size: int = 2
    in_chans: int = 3
    emb_dim: int = 192
    encoder_layer: int = 12
    encoder_head: int = 3
    pos_embed: str = "learned"  # 'sincos' initialises the (trainable) position embedding
    num_classes: int = 10
    pool: str = "cls"  # 'cls' token after the final norm, or 'mean': official MAE global pool
    # (average of the pre-norm patch tokens, then a fresh LayerNorm fc_norm; norm = Identity)
    head: str = "linear"  # 'linear', or 'bn_linear' = BatchNorm1d(affine=False) + linear
    drop_path: float = 0.0  # stochastic depth rate of the last block

    def __post_init__(self):
        validate_vit(self.image_size, self.patch_size, self.in_chans, self.emb_dim,
                     self.encoder_layer, self.encoder_head, self.pos_embed)
        _check_positive(num_classes=self.num_classes)
        _check_choice("pool", self.pool, POOLS)
        _check_choice("head", self.head, HEADS)
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")


ENCODER_FIELDS = ("image_size", "patch_size", "in_chans", "emb_dim", "encoder_layer",
                  "encoder_head", "pos_embed")


def config_from_dict(cls, d):
    """Rebuild a config dataclass from the plain dict stored in a checkpoint."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
    return cls(**d)


# --------------------------------------------------------------------------- validation
def _check_positive(**values):
    for name, v in values.items():
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _check_divisible(name, value, by_name, by):
    if value % by:
        raise ValueError(f"{name}={value} must be divisible by {by_name}={by}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_mask_ratio(mask_ratio):
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")


def validate_vit(image_size, patch_size, in_chans, emb_dim, encoder_layer, encoder_head,
                 pos_embed):
    _check_positive(image_size=image_size, patch_size=patch_size, in_chans=in_chans,
                    emb_dim=emb_dim, encoder_layer=encoder_layer, encoder_head=encoder_head)
    _check_divisible("image_size", image_size, "patch_size", patch_size)
    _check_divisible("emb_dim", emb_dim, "encoder_head", encoder_head)
    _check_choice("pos_embed", pos_embed, POS_EMBEDS)
    if pos_embed == "sincos" and emb_dim % 4:
        raise ValueError(f"pos_embed='sincos' needs emb_dim divisible by 4, got {emb_dim}")


# --------------------------------------------------------------------------- building blocks
def sincos_pos_embed(dim, grid_size):
    """Fixed 2-D sin-cos position embedding with a zero row for the cls token: (1+g*g, dim)."""
    if dim % 4:
        raise ValueError(f"sincos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))  # (D/4,)
    ys, xs = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")

    def embed_1d(pos):  # (g*g,) -> (g*g, D/2)
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([embed_1d(xs), embed_1d(ys)], axis=1)  # (g*g, D)
    emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)  # (1+g*g, D)
    return torch.from_numpy(emb).float()


def vit_kwargs(image_size, patch_size, in_chans, emb_dim, encoder_layer, encoder_head,
               num_classes=0, pool="cls", drop_path=0.0):
    """Arguments of a timm VisionTransformer: the MAE encoder (num_classes=0) or a classifier.

    pool 'cls' keeps the final LayerNorm in `norm`; pool 'mean' is the official MAE global
    pool: timm averages the patch tokens before any norm and applies `fc_norm` (`norm` is then
    an Identity), so the pretrained final norm is left out as in main_finetune.py.
    """
    return dict(
        img_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        global_pool="token" if pool == "cls" else "avg", embed_dim=emb_dim,
        depth=encoder_layer, num_heads=encoder_head, mlp_ratio=MLP_RATIO, qkv_bias=True,
        fc_norm=pool == "mean", norm_layer=LayerNorm, drop_path_rate=drop_path)


def _xavier_init(module):
    """Official MAE init: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- MAE
class MAE_ViT(nn.Module):
    """Masked autoencoder: an encoder that sees only visible patches and a light decoder.

    forward(imgs) -> (loss, pred, mask): pred (B, L, p*p*C) pixels of every patch,
    mask (B, L) with 1 = masked; the loss is the MSE over masked patches only.
    """

    def __init__(self, image_size=32, patch_size=2, in_chans=3, emb_dim=192, encoder_layer=12,
                 encoder_head=3, decoder_dim=192, decoder_layer=4, decoder_head=None,
                 mask_ratio=0.75, norm_pix_loss=False, pos_embed="learned"):
        super().__init__()
        cfg = MAEConfig(image_size, patch_size, in_chans, emb_dim, encoder_layer, encoder_head,
                        decoder_dim, decoder_layer, decoder_head, mask_ratio, norm_pix_loss,
                        pos_embed)
        self.config = cfg
        self.encoder = VisionTransformer(**vit_kwargs(
            image_size, patch_size, in_chans, emb_dim, encoder_layer, encoder_head))
        num_patches = self.encoder.patch_embed.num_patches
        self.decoder_embed = nn.Linear(emb_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, decoder_dim))
        self.decoder_blocks = nn.Sequential(*[
            Block(decoder_dim, cfg.decoder_head, MLP_RATIO, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(decoder_layer)])
        self.decoder_norm = LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size ** 2 * in_chans)
        self.initialize_weights()

    @classmethod
    def from_config(cls, cfg):
        return cls(**asdict(cfg))

    def initialize_weights(self):
        enc = self.encoder
        grid = enc.patch_embed.grid_size[0]
        for pos in (enc.pos_embed, self.decoder_pos_embed):
            if self.config.pos_embed == "sincos":
                pos.data.copy_(sincos_pos_embed(pos.shape[-1], grid).unsqueeze(0))
                pos.requires_grad_(False)
            else:
                nn.init.trunc_normal_(pos, std=TOKEN_INIT_STD)
        self.apply(_xavier_init)
        w = enc.patch_embed.proj.weight  # a conv, initialised like a linear layer
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        nn.init.normal_(enc.cls_token, std=TOKEN_INIT_STD)
        nn.init.normal_(self.mask_token, std=TOKEN_INIT_STD)

    # ---- patches
    def patchify(self, imgs):
        """(B, C, H, W) -> (B, L, p*p*C), patches in row-major order, pixels as (p, p, C)."""
        p = self.config.patch_size
        return rearrange(imgs, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)

    def unpatchify(self, x):
        """(B, L, p*p*C) -> (B, C, H, W), the exact inverse of patchify."""
        p = self.config.patch_size
        g = self.config.image_size // p
        return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=g, w=g, p=p, q=p)

    def num_kept(self, mask_ratio):
        """Patches the encoder sees: int(L * (1 - mask_ratio))."""
        return int(self.encoder.patch_embed.num_patches * (1 - mask_ratio))

    def random_masking(self, x, mask_ratio, noise=None):
        """Keep a uniformly random subset of int(L*(1-r)) patches per sample.

        x: (B, L, D); noise: optional (B, L) uniform noise that decides the mask.
        Returns x_kept (B, K, D), mask (B, L) with 1 = masked, ids_restore (B, L).
        """
        b, n, d = x.shape
        keep = self.num_kept(mask_ratio)
        if noise is None:
            noise = torch.rand(b, n, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device, dtype=x.dtype)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    # ---- encoder / decoder / loss
    def forward_encoder(self, imgs, mask_ratio, noise=None):
        """(B, C, H, W) -> latent (B, 1+K, D), mask (B, L), ids_restore (B, L)."""
        enc = self.encoder
        x = enc.patch_embed(imgs) + enc.pos_embed[:, 1:]  # (B, L, D)
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)  # (B, K, D)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (B, 1+K, D)
        x = enc.norm(enc.blocks(x))
        return x, mask, ids_restore

    def forward_decoder(self, latent, ids_restore):
        """latent (B, 1+K, D) -> predicted pixels (B, L, p*p*C) of every patch."""
        x = self.decoder_embed(latent)  # (B, 1+K, Dd)
        b, n_vis, d = x.shape[0], x.shape[1] - 1, x.shape[2]
        n = ids_restore.shape[1]
        masks = self.mask_token.expand(b, n - n_vis, -1)  # (B, L-K, Dd)
        patches = torch.cat([x[:, 1:], masks], dim=1)  # (B, L, Dd), shuffled order
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed  # (B, 1+L, Dd)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:]  # drop the cls token: (B, L, p*p*C)

    def forward_loss(self, imgs, pred, mask):
        """Mean over masked patches of the per-patch MSE; all patches if none is masked."""
        target = self.patchify(imgs)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # (B, L)
        n_masked = mask.sum()
        masked_mean = (per_patch * mask).sum() / n_masked.clamp(min=1)
        return torch.where(n_masked > 0, masked_mean, per_patch.mean())  # no host sync

    def forward(self, imgs, mask_ratio=None, noise=None):
        """imgs (B, C, H, W) -> (loss, pred (B, L, p*p*C), mask (B, L))."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        check_mask_ratio(ratio)
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask

    def encoder_state_dict(self):
        """The encoder's tensors under timm VisionTransformer keys."""
        return self.encoder.state_dict()


# --------------------------------------------------------------------------- classifier
class ViT_Classifier(VisionTransformer):
    """A timm VisionTransformer with the MAE encoder's trunk and a linear (or BN + linear) head."""

    def __init__(self, cfg: ClassifierConfig):
        trunk = {k: getattr(cfg, k) for k in ENCODER_FIELDS if k != "pos_embed"}
        super().__init__(**vit_kwargs(**trunk, num_classes=cfg.num_classes, pool=cfg.pool,
                                      drop_path=cfg.drop_path))
        self.config = cfg
        if cfg.pos_embed == "sincos":
            grid = self.patch_embed.grid_size[0]
            self.pos_embed.data.copy_(sincos_pos_embed(cfg.emb_dim, grid).unsqueeze(0))
        if cfg.head == "bn_linear":
            self.head = nn.Sequential(nn.BatchNorm1d(cfg.emb_dim, affine=False, eps=BN_EPS),
                                      nn.Linear(cfg.emb_dim, cfg.num_classes))
        self.init_head(TOKEN_INIT_STD)

    def init_head(self, std):
        """Truncated-normal head weights of this std and zero bias (MAE: 2e-5 to fine-tune,
        0.01 to probe)."""
        nn.init.trunc_normal_(self.head_linear.weight, std=std)
        nn.init.zeros_(self.head_linear.bias)

    def freeze_trunk(self):
        """Linear probing: only the head trains; the trunk stays in eval mode."""
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("head."))
        self.trunk_frozen = True
        return self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        if getattr(self, "trunk_frozen", False):
            for name, child in self.named_children():
                if name != "head":
                    child.eval()
        return self

    @property
    def head_linear(self):
        return self.head[-1] if isinstance(self.head, nn.Sequential) else self.head

    def head_keys(self):
        return {"head." + k for k in self.head.state_dict()}

    def encoder_state_dict(self):
        """The tensors that come from the encoder (not the head, nor a fresh fc_norm)."""
        return {k: v for k, v in self.state_dict().items() if k not in self.fresh_keys()}

    def from_encoder(self, encoder_state):
        """The encoder tensors this model takes: with pool 'mean' the encoder's final norm is
        dropped, as official MAE fine-tuning does (fc_norm starts fresh instead)."""
        if self.config.pool != "mean":
            return encoder_state
        return {k: v for k, v in encoder_state.items() if not k.startswith("norm.")}

    def fresh_keys(self):
        """Keys that start fresh rather than from the encoder: the head, and fc_norm."""
        return self.head_keys() | {"fc_norm." + k for k in self.fc_norm.state_dict()}

    def load_encoder(self, encoder_state):
        """Copy encoder tensors exactly (see from_encoder); any missing or unexpected key is
        an error."""
        missing, unexpected = self.load_state_dict(self.from_encoder(encoder_state),
                                                   strict=False)
        missing = set(missing) - self.fresh_keys()
        if missing or unexpected:
            raise KeyError(f"encoder keys do not match: missing {sorted(missing)}, "
                           f"unexpected {sorted(unexpected)}")

    @classmethod
    def from_mae(cls, mae_config: MAEConfig, encoder_state, **overrides):
        """Build a classifier whose trunk is the MAE encoder (weights copied exactly)."""
        enc = {k: getattr(mae_config, k) for k in ENCODER_FIELDS}
        model = cls(ClassifierConfig(**enc, **overrides))
        model.load_encoder(encoder_state)
        return model

    def features(self, x):
        """(B, C, H, W) -> pooled features (B, D), before the head."""
        return self.forward_head(self.forward_features(x), pre_logits=True)
