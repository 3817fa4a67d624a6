"""model.py: patches, masking, the loss, no information leak, gradients, config checks."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from model import ClassifierConfig, MAE_ViT, MAEConfig, ViT_Classifier, sincos_pos_embed

TINY = dict(emb_dim=32, encoder_layer=2, encoder_head=2, decoder_dim=32, decoder_layer=1)
pytestmark = pytest.mark.usefixtures("one_thread")
BATCH = 4
NORM_PIX_EPS = 1e-6  # the per-patch variance epsilon of the paper's normalised target


def tiny_mae(**overrides):
    torch.manual_seed(0)
    return MAE_ViT(**{**TINY, **overrides})


def images(model, batch=BATCH, seed=1):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, generator=g)


def fixed_noise(model, batch=BATCH, seed=2):
    n = model.encoder.patch_embed.num_patches
    return torch.rand(batch, n, generator=torch.Generator().manual_seed(seed))


def patches_by_slicing(imgs, p):
    """Reference patchify: row-major patches, each flattened as (p, p, C)."""
    b, c, h, w = imgs.shape
    rows = [imgs[:, :, i:i + p, j:j + p].permute(0, 2, 3, 1).reshape(b, -1)
            for i in range(0, h, p) for j in range(0, w, p)]
    return torch.stack(rows, dim=1)  # (B, L, p*p*C)


def encoder_tokens(model):
    """A list that receives the token count entering encoder.blocks on every forward."""
    seen = []
    model.encoder.blocks.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    return seen


# --------------------------------------------------------------------------- patches
@pytest.mark.parametrize("kw", [dict(), dict(in_chans=1, patch_size=4, image_size=28)])
def test_patchify_matches_slicing_and_unpatchify_inverts_it(kw):
    model = tiny_mae(**kw)
    x = images(model)
    p = model.config.patch_size
    patches = model.patchify(x)
    assert patches.shape == (BATCH, (model.config.image_size // p) ** 2,
                             p * p * model.config.in_chans)
    assert torch.equal(patches, patches_by_slicing(x, p))
    assert torch.equal(model.unpatchify(patches), x)


# --------------------------------------------------------------------------- masking
@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.6, 0.0])
def test_encoder_sees_exactly_the_kept_patches_plus_cls(ratio):
    model = tiny_mae()
    seen = encoder_tokens(model)
    num_patches = model.encoder.patch_embed.num_patches
    _, _, mask = model(images(model), mask_ratio=ratio)
    kept = int(num_patches * (1 - ratio))
    assert seen == [kept + 1]
    assert torch.equal(mask.sum(1), torch.full((BATCH,), float(num_patches - kept)))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("train", [True, False])
def test_masks_differ_between_samples_and_repeat_with_the_seed(train):
    model = tiny_mae().train(train)
    x = images(model, batch=8)
    torch.manual_seed(123)
    _, _, mask_a = model(x)
    torch.manual_seed(123)
    _, _, mask_b = model(x)
    assert torch.equal(mask_a, mask_b)
    assert len({tuple(m.tolist()) for m in mask_a}) == 8
    torch.manual_seed(124)
    assert not torch.equal(model(x)[2], mask_a)


def test_mask_ratio_zero_masks_nothing():
    model = tiny_mae(mask_ratio=0.0)
    seen = encoder_tokens(model)
    loss, pred, mask = model(images(model))
    assert seen == [model.encoder.patch_embed.num_patches + 1]
    assert mask.sum() == 0
    assert torch.isfinite(loss) and torch.isfinite(pred).all()


def test_mask_ratio_one_is_refused():
    model = tiny_mae()
    with pytest.raises(ValueError, match="mask_ratio"):
        model(images(model), mask_ratio=1.0)


def test_without_masking_the_prediction_does_not_depend_on_the_masking_noise():
    """Ratio 0 keeps every patch, in the noise's shuffled order: the decoder must put them
    back (gather by ids_restore), so each patch's prediction is the same for any noise."""
    model = tiny_mae().eval()
    x = images(model)
    in_order = torch.arange(model.encoder.patch_embed.num_patches).float().expand(BATCH, -1)
    _, reference, _ = model(x, mask_ratio=0.0, noise=in_order)
    for seed in (3, 4):
        _, pred, mask = model(x, mask_ratio=0.0, noise=fixed_noise(model, seed=seed))
        assert mask.sum() == 0
        torch.testing.assert_close(pred, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_encoder_tokens_are_patch_plus_position_embeddings_at_the_kept_patches(pos_embed):
    """The tokens entering the blocks: cls + its position, then patch_embed + pos_embed of
    each kept patch (the smallest noise first), so every token keeps its own position."""
    model = tiny_mae(pos_embed=pos_embed).eval()
    x, noise = images(model), fixed_noise(model)
    seen = []
    model.encoder.blocks.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.forward_encoder(x, 0.75, noise)
    enc = model.encoder
    keep = model.num_kept(0.75)
    ids_keep = noise.argsort(dim=1)[:, :keep]  # (B, K)
    tokens = enc.patch_embed(x) + enc.pos_embed[:, 1:]  # (B, L, D)
    expected = torch.stack([tokens[b, ids_keep[b]] for b in range(BATCH)])  # (B, K, D)
    torch.testing.assert_close(seen[0][:, 1:], expected)
    cls = (enc.cls_token + enc.pos_embed[:, :1])[0, 0]
    for b in range(BATCH):
        torch.testing.assert_close(seen[0][b, 0], cls)


# --------------------------------------------------------------------------- loss
def masked_mse_by_hand(imgs, pred, mask, p, norm_pix):
    b, c = imgs.shape[:2]
    target = F.unfold(imgs, kernel_size=p, stride=p)  # (B, C*p*p, L), channel-major
    target = target.reshape(b, c, p * p, -1).permute(0, 3, 2, 1).reshape(b, -1, p * p * c)
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / torch.sqrt(var + NORM_PIX_EPS)
    per_patch = ((pred - target) ** 2).mean(-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum()


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_is_the_mse_over_masked_patches(norm_pix):
    model = tiny_mae(norm_pix_loss=norm_pix)
    x = images(model)
    loss, pred, mask = model(x, noise=fixed_noise(model))
    expected = masked_mse_by_hand(x, pred, mask, model.config.patch_size, norm_pix)
    torch.testing.assert_close(loss, expected)
    # visible patches do not count: changing their prediction leaves the loss unchanged
    pred2 = pred + 10.0 * (1 - mask)[..., None]
    torch.testing.assert_close(model.forward_loss(x, pred2, mask), loss)


@pytest.mark.parametrize("n_masked", [0, 1, 2])
def test_loss_averages_exactly_the_masked_patches_even_one_or_none(n_masked):
    """Per-patch errors 0, 1, 2, ... by construction: the loss is the mean error of the
    masked patches (patches 3, 4 here), or of all patches when none is masked."""
    model = tiny_mae()
    x = torch.zeros(1, 3, 32, 32)
    num_patches = model.encoder.patch_embed.num_patches
    errors = torch.arange(num_patches).float()  # (L,)
    pred = errors.sqrt()[None, :, None].expand(1, -1, model.patchify(x).shape[-1])
    mask = torch.zeros(1, num_patches)
    mask[0, 3:3 + n_masked] = 1
    expected = errors[3:3 + n_masked].mean() if n_masked else errors.mean()
    torch.testing.assert_close(model.forward_loss(x, pred, mask), expected)


# --------------------------------------------------------------------------- no leak
def test_masked_pixels_do_not_reach_the_encoder_or_the_prediction():
    model = tiny_mae().eval()
    x, noise = images(model), fixed_noise(model)
    latent, mask, _ = model.forward_encoder(x, 0.75, noise)
    _, pred, _ = model(x, noise=noise)
    pixel_mask = model.unpatchify(mask[..., None].expand(-1, -1, model.patchify(x).shape[-1]))
    scrambled = torch.where(pixel_mask.bool(), torch.randn_like(x) * 5, x)
    assert not torch.equal(scrambled, x)
    latent2, mask2, _ = model.forward_encoder(scrambled, 0.75, noise)
    _, pred2, _ = model(scrambled, noise=noise)
    assert torch.equal(mask2, mask)
    torch.testing.assert_close(latent2, latent)
    torch.testing.assert_close(pred2, pred)
    # the check can fail: a change to a visible pixel does change the prediction
    visible = torch.where(pixel_mask.bool(), x, x + 1.0)
    assert not torch.allclose(model(visible, noise=noise)[1], pred)


# --------------------------------------------------------------------------- gradients
def assert_every_trainable_parameter_gets_a_gradient(model, loss):
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} gets no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_mae_backward_reaches_every_trainable_parameter(pos_embed):
    model = tiny_mae(pos_embed=pos_embed).train()
    loss, pred, _ = model(images(model, batch=8))
    assert torch.isfinite(pred).all()
    assert_every_trainable_parameter_gets_a_gradient(model, loss)


@pytest.mark.parametrize("head,pool", [("linear", "cls"), ("bn_linear", "mean")])
def test_classifier_backward_reaches_every_trainable_parameter(head, pool):
    torch.manual_seed(0)
    model = ViT_Classifier(ClassifierConfig(emb_dim=32, encoder_layer=2, encoder_head=2,
                                            head=head, pool=pool)).train()
    x = torch.randn(8, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (8, 10) and torch.isfinite(logits).all()
    loss = F.cross_entropy(logits, torch.arange(8) % 10)
    assert_every_trainable_parameter_gets_a_gradient(model, loss)


# --------------------------------------------------------------------------- position embeds
def test_sincos_position_embeddings_are_fixed_and_frozen():
    model = tiny_mae(pos_embed="sincos", decoder_dim=64, decoder_layer=1)
    grid = model.encoder.patch_embed.grid_size[0]
    enc_pos, dec_pos = model.encoder.pos_embed, model.decoder_pos_embed
    assert not enc_pos.requires_grad and not dec_pos.requires_grad
    assert torch.equal(enc_pos[0], sincos_pos_embed(32, grid))
    assert torch.equal(dec_pos[0], sincos_pos_embed(64, grid))
    assert torch.equal(enc_pos[0, 0], torch.zeros(32))  # the cls token's row
    assert len({tuple(r.tolist()) for r in enc_pos[0, 1:]}) == grid * grid  # all distinct
    torch.manual_seed(99)
    assert torch.equal(MAE_ViT(**TINY, pos_embed="sincos").encoder.pos_embed, enc_pos)
    before = (enc_pos.clone(), dec_pos.clone())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(images(model))[0].backward()
    opt.step()
    assert torch.equal(enc_pos, before[0]) and torch.equal(dec_pos, before[1])


def official_mae_sincos(dim, grid):
    """get_2d_sincos_pos_embed of facebookresearch/mae, written out per position and channel:
    np.meshgrid(grid_w, grid_h) puts w (the column, x) in grid[0], which fills the first
    half of the channels; each half is [sin(pos * omega), cos(pos * omega)] with
    omega_k = 1 / 10000 ** (k / (dim / 4)), k < dim / 4."""
    quarter = dim // 4
    rows = [[0.0] * dim]  # the cls token
    for i in range(grid):  # row (y)
        for j in range(grid):  # column (x)
            row = []
            for pos in (j, i):
                omegas = [1.0 / 10000 ** (k / quarter) for k in range(quarter)]
                row += [math.sin(pos * w) for w in omegas] + [math.cos(pos * w) for w in omegas]
            rows.append(row)
    return torch.tensor(rows)


def test_sincos_values_by_hand_for_a_two_by_two_grid():
    """dim 8: omegas 1 and 1/100; patch 1 is (row 0, column 1), patch 2 is (row 1, column 0)."""
    emb = sincos_pos_embed(8, 2)
    s1, c1, s01, c01 = math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)
    expected = torch.tensor([
        [0, 0, 0, 0, 0, 0, 0, 0],  # cls
        [0, 0, 1, 1, 0, 0, 1, 1],  # (0, 0)
        [s1, s01, c1, c01, 0, 0, 1, 1],  # (row 0, column 1): x = 1 in the first half
        [0, 0, 1, 1, s1, s01, c1, c01],  # (row 1, column 0): y = 1 in the second half
        [s1, s01, c1, c01, s1, s01, c1, c01],
    ])
    torch.testing.assert_close(emb, expected)


@pytest.mark.parametrize("dim,grid", [(16, 4), (32, 3), (64, 16)])
def test_sincos_matches_the_official_mae_formula(dim, grid):
    """To float32 rounding: on a 16 x 16 grid a base of 9999 instead of 10000 is off by 6e-5."""
    torch.testing.assert_close(sincos_pos_embed(dim, grid), official_mae_sincos(dim, grid),
                               atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- encoder transfer
def test_classifier_from_mae_holds_the_encoder_tensors():
    mae = tiny_mae()
    clf = ViT_Classifier.from_mae(mae.config, mae.encoder_state_dict(), num_classes=7)
    clf_state = clf.state_dict()
    for k, v in mae.encoder_state_dict().items():
        assert torch.equal(clf_state[k], v), k
    assert set(clf_state) - set(mae.encoder_state_dict()) == clf.head_keys()
    x = images(mae)
    enc = mae.encoder.eval()
    torch.testing.assert_close(clf.eval().features(x),
                               enc.forward_head(enc.forward_features(x), pre_logits=True))


def test_mae_encoder_loads_strictly_into_a_timm_vit_with_the_same_features():
    mae = tiny_mae().eval()
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=2,
                            embed_dim=32, depth=2, num_heads=2, num_classes=0)
    vit.load_state_dict(mae.encoder_state_dict(), strict=True)
    x = images(mae)
    num_patches = mae.encoder.patch_embed.num_patches
    in_order = torch.arange(num_patches).float().expand(BATCH, -1)  # keep every patch in place
    latent, _, _ = mae.forward_encoder(x, 0.0, in_order)
    torch.testing.assert_close(vit.eval().forward_features(x), latent)
    torch.testing.assert_close(vit(x), latent[:, 0])


def test_load_encoder_refuses_missing_and_unexpected_keys():
    mae = tiny_mae()
    clf = ViT_Classifier(ClassifierConfig(emb_dim=32, encoder_layer=2, encoder_head=2))
    state = mae.encoder_state_dict()
    missing = {k: v for k, v in state.items() if k != "norm.weight"}
    with pytest.raises(KeyError, match="norm.weight"):
        clf.load_encoder(missing)
    with pytest.raises(KeyError, match="extra.weight"):
        clf.load_encoder({**state, "extra.weight": torch.zeros(1)})
    clf.load_encoder(state)  # the exact key set loads


# --------------------------------------------------------------------------- config checks
BAD_MAE_CONFIGS = [
    (dict(image_size=30, patch_size=4), "image_size"),
    (dict(emb_dim=30, encoder_head=4), "emb_dim"),
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(mask_ratio=-0.1), "mask_ratio"),
    (dict(image_size=0), "image_size"),
    (dict(patch_size=0), "patch_size"),
    (dict(in_chans=0), "in_chans"),
    (dict(emb_dim=-32), "emb_dim"),
    (dict(encoder_layer=0), "encoder_layer"),
    (dict(encoder_head=0), "encoder_head"),
    (dict(decoder_dim=0), "decoder_dim"),
    (dict(decoder_layer=0), "decoder_layer"),
    (dict(decoder_head=0), "decoder_head"),
    (dict(decoder_dim=32, decoder_head=3), "decoder_dim"),
    (dict(pos_embed="rope"), "pos_embed"),
    (dict(pos_embed="sincos", decoder_dim=30), "decoder_dim"),
]


@pytest.mark.parametrize("kw,name", BAD_MAE_CONFIGS)
def test_invalid_mae_config_names_the_setting(kw, name):
    with pytest.raises(ValueError, match=name):
        MAEConfig(**{**TINY, **kw})
    with pytest.raises(ValueError, match=name):
        MAE_ViT(**{**TINY, **kw})


@pytest.mark.parametrize("kw,name", [
    (dict(image_size=30, patch_size=4), "image_size"),
    (dict(emb_dim=30, encoder_head=4), "emb_dim"),
    (dict(num_classes=0), "num_classes"),
    (dict(pool="max"), "pool"),
    (dict(head="mlp"), "head"),
    (dict(drop_path=1.0), "drop_path"),
])
def test_invalid_classifier_config_names_the_setting(kw, name):
    with pytest.raises(ValueError, match=name):
        ClassifierConfig(**{**dict(emb_dim=32, encoder_layer=2, encoder_head=2), **kw})


def test_default_decoder_heads_follow_the_width():
    assert MAEConfig(decoder_dim=192).decoder_head == 3
    assert MAEConfig(**TINY).decoder_head == 1  # never 0 heads
