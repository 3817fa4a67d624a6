"""Architecture presets: `--model NAME` names a whole ViT, as timm's model names do.

Every architecture flag not given takes the preset's value; a flag given overrides it. The run
prints the resolved architecture (like a recipe) and args.json records the values, so a
replay (--config) or a resume does not depend on this table.
"""
ENCODER_KEYS = ("patch_size", "emb_dim", "encoder_layer", "encoder_head")
DECODER_KEYS = ("decoder_layer", "decoder_dim")
PRESETS = {
    # the seed's ViT-T/2 for 32 x 32 images, decoder 4 x 192: GPU-sized (batch 4096)
    "vit_tiny_patch2_32": dict(patch_size=2, emb_dim=192, encoder_layer=12, encoder_head=3,
                               decoder_layer=4, decoder_dim=192),
    # width 64, 6 blocks of 4 heads, patch 4, decoder 2 x 64 (the CPU study's model): an
    # epoch of Fashion-MNIST in about a minute on 2 CPU cores
    "vit_micro_patch4": dict(patch_size=4, emb_dim=64, encoder_layer=6, encoder_head=4,
                             decoder_layer=2, decoder_dim=64),
}
DEFAULT_PRESET = "vit_tiny_patch2_32"


def add_model_arg(group):
    group.add_argument("--model", default=None, choices=tuple(PRESETS),
                       help=f"architecture preset: fills every architecture flag not given "
                            f"(default {DEFAULT_PRESET}); flags given override it")


def choose(args, keys):
    """(preset name, rows (key, value, 'flag' | 'preset')): each of `keys` as given, else
    the preset's (args.model, else DEFAULT_PRESET). args is not changed."""
    name = args.model or DEFAULT_PRESET
    rows = [(k, getattr(args, k), "flag") if getattr(args, k) is not None
            else (k, PRESETS[name][k], "preset") for k in keys]
    return name, rows


def resolve(args, keys):
    """Fill each of `keys` left None from the preset and name it in args.model -> rows."""
    args.model, rows = choose(args, keys)
    for k, v, _ in rows:
        setattr(args, k, v)
    return rows


def describe(name, rows):
    """The resolved architecture a run prints, one line."""
    parts = [f"{k} {v}{' (flag)' if src == 'flag' else ''}" for k, v, src in rows]
    return f"model {name}: " + ", ".join(parts)
