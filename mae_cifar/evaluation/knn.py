"""Weighted k-nearest-neighbour accuracy of an encoder: a monitor of representation quality.

The encoder sees every patch (no masking); its cls token (or mean patch token) is
L2-normalised; each held-out (query) image votes among its k most cosine-similar training
images with weights exp(similarity / T), summed per class (Wu et al. 2018, InstDisc; Caron et
al. 2021, DINO). Under DDP every rank encodes a shard of the images, the features are
gathered, and every rank gets the same accuracy.
"""
import torch
import torch.nn.functional as F

from mae_cifar import cli, distributed
from mae_cifar.data.loader import DeviceLoader
from model import POOLS

TIMM_POOL = {"cls": "token", "mean": "avg"}  # --knn_feature -> timm VisionTransformer.pool type
SIM_CHUNK_ELEMENTS = 2 ** 24  # similarities held at once (64 MiB in fp32) when classifying


def add_knn_args(parser):
    """Flags of the kNN monitor (mae_pretrain.py)."""
    g = parser.add_argument_group("kNN monitor")
    g.add_argument("--knn_freq", type=cli.non_negative_int, default=10,
                   help="kNN accuracy of the encoder every N epochs (and the last); 0 = off")
    g.add_argument("--knn_k", type=cli.positive_int, default=20,
                   help="neighbours that vote")
    g.add_argument("--knn_t", type=cli.positive_float, default=0.07,
                   help="temperature of the vote weights exp(similarity / T)")
    g.add_argument("--pool", "--knn_feature", dest="knn_feature", default="cls", choices=POOLS,
                   help="feature the kNN monitor reads: the cls token or the mean of the patch "
                        "tokens (train_classifier.py's --pool)")
    g.add_argument("--knn_train_images", type=cli.positive_int, default=10000,
                   help="first N training images form the memory bank")
    g.add_argument("--knn_eval_images", type=cli.positive_int, default=2000,
                   help="first N held-out images are classified (mae_pretrain.py: the "
                        "--val_split images, else test)")


# --------------------------------------------------------------------------- classification
def neighbours(train_feats, test_feats, k):
    """(similarities, indices), each (Q, k): the k training points most cosine-similar to
    each test point, most similar first. train_feats (N, D), test_feats (Q, D) L2-normalised."""
    k = min(k, train_feats.shape[0])
    chunk = max(1, SIM_CHUNK_ELEMENTS // train_feats.shape[0])
    top = [(q @ train_feats.T).topk(k, dim=1) for q in test_feats.split(chunk)]  # (q, N) -> k
    return torch.cat([s for s, _ in top]), torch.cat([i for _, i in top])


def vote(top_sim, top_labels, num_classes, k, T):
    """Class scores (Q, num_classes) from the first k of each row of neighbours():
    score[q, c] = sum over those of class c of exp((sim - top sim of q) / T), i.e.
    exp(sim / T) divided by one factor per query: every ranking is the same, and exp stays
    finite for any T (exp(1 / 0.01) overflows float32, and infinite votes tie)."""
    top_sim, top_labels = top_sim[:, :k], top_labels[:, :k]  # (Q, k), most similar first
    votes = torch.zeros(top_sim.shape[0], num_classes, device=top_sim.device,
                        dtype=top_sim.dtype)
    return votes.scatter_add_(1, top_labels, ((top_sim - top_sim[:, :1]) / T).exp())


def knn_classify(train_feats, train_labels, test_feats, num_classes, k, T):
    """Class scores (Q, num_classes) of weighted kNN voting.

    train_feats (N, D) and test_feats (Q, D) L2-normalised; train_labels (N,) int64.
    score[q, c] = sum over the k most similar training points of class c of exp(sim / T),
    divided by exp(top similarity of q / T) (see vote).
    """
    top_sim, top_idx = neighbours(train_feats, test_feats, k)
    return vote(top_sim, train_labels[top_idx], num_classes, k, T)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes, k, T):
    """Fraction of test points whose highest-scoring class is their label."""
    pred = knn_classify(train_feats, train_labels, test_feats, num_classes, k, T).argmax(1)
    return (pred == test_labels).float().mean().item()


def knn_grid_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes, ks, Ts):
    """Accuracies (len(ks), len(Ts)) of knn_accuracy for every k and T; the similarities
    and neighbours are computed once, for the largest k."""
    top_sim, top_idx = neighbours(train_feats, test_feats, max(ks))
    top_labels = train_labels[top_idx]  # (Q, max k)
    return torch.tensor([[(vote(top_sim, top_labels, num_classes, k, T).argmax(1)
                           == test_labels).float().mean().item() for T in Ts] for k in ks])


# --------------------------------------------------------------------------- features
def shard(n, rank, world):
    """This rank's contiguous slice of range(n) and the padded shard length (equal on all)."""
    per = -(-n // world)
    return slice(min(rank * per, n), min((rank + 1) * per, n)), per


@torch.inference_mode()
def encode(encoder, loader, n, feature, batch_size, autocast, rank=0, world=1):
    """L2-normalised features (n, D) of the first n images of loader's split, in order.

    Each rank encodes its shard; shards are zero-padded to equal length, gathered, trimmed.
    """
    part, per = shard(n, rank, world)
    idx = torch.arange(part.start, part.stop, device=loader.split.images.device)
    feats = torch.zeros(per, encoder.embed_dim, device=idx.device)  # (per, D)
    for i, chunk in enumerate(idx.split(batch_size)):
        if len(chunk) == 0:  # a rank with nothing left (n < world)
            break
        x, _ = loader.batch(chunk)  # (b, C, H, W) normalised, not augmented
        with autocast():
            tokens = encoder.forward_features(x)  # (b, 1+L, D), all patches
        pooled = encoder.pool(tokens, pool_type=TIMM_POOL[feature]).float()  # (b, D)
        feats[i * batch_size:i * batch_size + len(chunk)] = F.normalize(pooled, dim=1)
    return distributed.all_gather_cat(feats)[:n]  # (n, D)


class KNNMonitor:
    """kNN accuracy of model.encoder: training images as memory, held-out images as queries
    (`queries`: a split of data; default: data.test)."""

    def __init__(self, model, data, args, autocast, rank=0, world=1, queries=None):
        queries = data.test if queries is None else queries
        self.model, self.args, self.autocast = model, args, autocast
        self.rank, self.world, self.num_classes = rank, world, data.num_classes
        self.n_train = min(args.knn_train_images, len(data.train))
        self.n_test = min(args.knn_eval_images, len(queries))
        self.batch_size = args.max_device_batch_size
        self.memory = DeviceLoader(data.train, self.batch_size, data.mean, data.std,
                                   shuffle=False)
        self.queries = DeviceLoader(queries, self.batch_size, data.mean, data.std,
                                    shuffle=False)
        self.train_labels = data.train.labels[:self.n_train]  # (N,)
        self.test_labels = queries.labels[:self.n_test]  # (Q,)

    def due(self, epoch):
        """Whether epoch (0-based) is a monitored one: every knn_freq-th and the last."""
        freq = self.args.knn_freq
        return freq > 0 and ((epoch + 1) % freq == 0 or epoch + 1 == self.args.total_epoch)

    def accuracy(self):
        """kNN accuracy of the current encoder (every rank must call it: features are
        gathered)."""
        self.model.eval()
        encoder, a = self.model.encoder, self.args
        common = (a.knn_feature, self.batch_size, self.autocast, self.rank, self.world)
        train_feats = encode(encoder, self.memory, self.n_train, *common)
        test_feats = encode(encoder, self.queries, self.n_test, *common)
        return knn_accuracy(train_feats, self.train_labels, test_feats, self.test_labels,
                            self.num_classes, a.knn_k, a.knn_t)


def last_value(rows, column):
    """The last non-empty value of a metrics column (CSV strings) as a float, or None."""
    values = [r[column] for r in rows if r.get(column) not in (None, "")]
    return float(values[-1]) if values else None
