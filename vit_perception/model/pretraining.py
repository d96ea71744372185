"""Self-supervised objectives for the backbone: BEiT v2 (VQ-KD tokenizer + masked image modeling)
and SimMIM (teacher-free: regress the pixels of masked patches).

Masking is done in pixel space: a masked patch is replaced by a learned (3, p, p) mask patch.
The patch embedding is linear, so this equals a learned mask token (any token in the projection's
range, i.e. any token when 3 p^2 >= hidden size) and works for every backbone family unchanged.

BEiT v2 (Peng et al., 2022), at this project's scale:
1. `VQKDTokenizer`: a ViT encoder -> a linear map to a low-dimensional code space, L2-normalized
   -> the nearest entry of an L2-normalized codebook (updated by EMA, not by gradients) -> a
   small transformer decoder that reconstructs the teacher's patch features; loss = 1 - cosine
   similarity + a commitment term.
2. `BeitV2Student`: the backbone sees masked images; a linear head predicts the tokenizer's code
   of every masked patch (cross-entropy). The [CLS] patch-aggregation head: the last layer's
   prefix tokens + the patch tokens of a middle layer go through two more transformer layers
   whose patch outputs feed the same head (so [CLS] must carry the image's content).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vit_perception.model.backbone import Backbone


def random_patch_mask(batch: int, grid: tuple[int, int], ratio: float,
                      generator: torch.Generator) -> torch.Tensor:
    """(B, rows * cols) bool: exactly round(ratio * N) masked patches per image, uniformly."""
    count = grid[0] * grid[1]
    num_masked = max(1, int(round(ratio * count)))
    scores = torch.rand(batch, count, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < num_masked


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, rows * cols, 3 * patch * patch), row-major like the patch tokens."""
    batch, channels, height, width = pixels.shape
    grid = pixels.unflatten(2, (height // patch, patch)).unflatten(4, (width // patch, patch))
    # (B, 3, rows, p, cols, p) -> (B, rows, cols, 3, p, p)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * patch * patch)


class PixelMasker(nn.Module):
    """Replaces masked patches of (B, 3, H, W) pixels by a learned (3, p, p) mask patch."""

    def __init__(self, patch: int, channels: int = 3):
        super().__init__()
        self.patch = patch
        self.mask_patch = nn.Parameter(torch.zeros(channels, patch, patch))

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows, cols = pixels.shape[-2] // self.patch, pixels.shape[-1] // self.patch
        where = mask.view(-1, 1, rows, cols).to(pixels.dtype)  # (B, 1, rows, cols)
        where = where.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)
        tiled = self.mask_patch.repeat(1, rows, cols)  # (3, H, W)
        return pixels * (1 - where) + tiled * where


def patch_tokens(backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, N, D) the backbone's patch tokens (prefix tokens dropped)."""
    tokens = backbone.encode(backbone.embed(pixels), backbone.grid(pixels))
    return tokens[:, backbone.num_prefix_tokens:]


class TeacherFeatures(nn.Module):
    """A frozen backbone's patch features on the student's patch grid.

    Pixels arrive normalized with the student's mean/std; they are re-normalized with the
    teacher's, resized to the teacher's input size, and its (rows', cols') feature map is
    resized (bilinear) to the student's grid.
    """

    def __init__(self, backbone: Backbone, student_norm: tuple[list, list],
                 teacher_norm: tuple[list, list]):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.register_buffer('scale', torch.tensor(student_norm[1]).view(1, 3, 1, 1)
                             / torch.tensor(teacher_norm[1]).view(1, 3, 1, 1))
        self.register_buffer('shift', (torch.tensor(student_norm[0]) - torch.tensor(
            teacher_norm[0])).view(1, 3, 1, 1) / torch.tensor(teacher_norm[1]).view(1, 3, 1, 1))

    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, 3, H, W) student-normalized pixels -> (B, rows * cols, D_teacher)."""
        pixels = pixels * self.scale + self.shift
        if tuple(pixels.shape[-2:]) != self.backbone.image_size:
            pixels = F.interpolate(pixels, size=self.backbone.image_size, mode='bilinear',
                                   align_corners=False, antialias=True)
        features = patch_tokens(self.backbone, pixels)  # (B, N', D)
        rows, cols = self.backbone.grid(pixels)
        if (rows, cols) != tuple(grid):
            features = features.transpose(1, 2).unflatten(2, (rows, cols))  # (B, D, r', c')
            features = F.interpolate(features, size=grid, mode='bilinear', align_corners=False)
            features = features.flatten(2).transpose(1, 2)  # (B, N, D)
        return features


class EMACodebook(nn.Module):
    """K L2-normalized codes of dimension d, updated by exponential moving averages."""

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.decay, self.eps = decay, eps
        codes = F.normalize(torch.randn(num_codes, dim), dim=-1)
        self.register_buffer('codes', codes)
        self.register_buffer('cluster_size', torch.ones(num_codes))
        self.register_buffer('code_sum', codes.clone())

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, d) L2-normalized vectors -> quantized (M, d) (straight-through), code ids (M,).
        In training mode the codebook moves towards the vectors assigned to it."""
        ids = (z @ self.codes.t()).argmax(dim=-1)  # cosine nearest code
        quantized = self.codes[ids]
        if self.training:
            with torch.no_grad():
                onehot = F.one_hot(ids, len(self.codes)).to(z.dtype)  # (M, K)
                self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                self.code_sum.mul_(self.decay).add_(onehot.t() @ z, alpha=1 - self.decay)
                used = self.cluster_size > self.eps
                means = self.code_sum / self.cluster_size.clamp_min(self.eps).unsqueeze(1)
                self.codes.copy_(torch.where(used.unsqueeze(1), F.normalize(means, dim=-1),
                                             self.codes))
        return z + (quantized - z).detach(), ids


def small_transformer(dim: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation='gelu',
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class VQKDTokenizer(nn.Module):
    """Pixels -> discrete codes per patch, trained to reconstruct a teacher's features."""

    def __init__(self, encoder: Backbone, teacher_dim: int, num_codes: int, code_dim: int,
                 heads: int, commitment: float = 0.25):
        super().__init__()
        hidden = encoder.hidden_size
        self.encoder = encoder
        self.to_code = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(),
                                     nn.Linear(hidden, code_dim))
        self.codebook = EMACodebook(num_codes, code_dim)
        self.decoder_in = nn.Linear(code_dim, hidden)
        self.decoder = small_transformer(hidden, heads, 1)
        self.decoder_out = nn.Linear(hidden, teacher_dim)
        self.commitment = commitment

    def encode(self, pixels: torch.Tensor):
        """(B, 3, H, W) -> code vectors z (B, N, d), quantized (B, N, d), code ids (B, N)."""
        z = F.normalize(self.to_code(patch_tokens(self.encoder, pixels)), dim=-1)  # (B, N, d)
        quantized, ids = self.codebook(z.flatten(0, 1))
        return z, quantized.view_as(z), ids.view(z.shape[:2])

    def loss(self, pixels: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Cosine reconstruction of the teacher's (B, N, D_t) features + commitment."""
        z, quantized, ids = self.encode(pixels)
        decoded = self.decoder_out(self.decoder(self.decoder_in(quantized)))  # (B, N, D_t)
        rec = 1 - F.cosine_similarity(decoded, target, dim=-1).mean()
        commit = (z - quantized.detach()).square().sum(-1).mean()
        return rec + self.commitment * commit, {'rec': rec.item(), 'ids': ids}

    @torch.no_grad()
    def codes(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N) code ids (no codebook update)."""
        was_training = self.training
        self.eval()
        ids = self.encode(pixels)[2]
        self.train(was_training)
        return ids


class BeitV2Student(nn.Module):
    """Masked image modeling on the tokenizer's codes, with the [CLS] aggregation head."""

    def __init__(self, backbone: Backbone, num_codes: int, heads: int):
        super().__init__()
        self.backbone = backbone
        self.masker = PixelMasker(backbone.patch_size)
        hidden = backbone.hidden_size
        self.head = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, num_codes))
        layers = len(backbone.layers)
        # BEiT v2 uses layer 9 of 12 for the aggregation head; here the same 3/4 depth
        self.middle_layer = max(1, (3 * layers) // 4)
        has_cls = backbone.num_prefix_tokens > 0 and self.middle_layer < layers
        self.aggregation = small_transformer(hidden, heads, 2) if has_cls else None

    def loss(self, pixels: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor
             ) -> tuple[torch.Tensor, dict]:
        """(B, 3, H, W), (B, N) bool mask, (B, N) target codes -> loss, stats."""
        backbone = self.backbone
        grid = backbone.grid(pixels)
        prefix = backbone.num_prefix_tokens
        tokens = backbone.embed(self.masker(pixels, mask))
        middle = backbone.run_layers(tokens, grid, 0, self.middle_layer)
        last = backbone.final_norm(backbone.run_layers(middle, grid, self.middle_layer,
                                                       len(backbone.layers)))
        logits = self.head(last[:, prefix:])  # (B, N, K)
        loss = F.cross_entropy(logits[mask], codes[mask])
        stats = {'mim': loss.item(),
                 'accuracy': (logits[mask].argmax(-1) == codes[mask]).float().mean().item()}
        if self.aggregation is not None:
            joined = torch.cat([last[:, :prefix], middle[:, prefix:]], dim=1)
            aggregated = self.aggregation(joined)[:, prefix:]  # (B, N, D)
            cls_loss = F.cross_entropy(self.head(aggregated)[mask], codes[mask])
            stats['cls_head'] = cls_loss.item()
            loss = loss + cls_loss
        return loss, stats


class SimMIM(nn.Module):
    """Teacher-free: regress the (normalized-image) pixels of masked patches, L1 loss."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.masker = PixelMasker(backbone.patch_size)
        patch = backbone.patch_size
        self.head = nn.Linear(backbone.hidden_size, 3 * patch * patch)

    def loss(self, pixels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        predicted = self.head(patch_tokens(self.backbone, self.masker(pixels, mask)))  # (B,N,P)
        target = patchify(pixels, self.backbone.patch_size)
        loss = (predicted - target).abs()[mask].mean()
        return loss, {'l1': loss.item()}


def codebook_usage(ids: torch.Tensor, num_codes: int) -> dict:
    """Codes used by (M,) ids: count, fraction of the codebook and perplexity (exp entropy)."""
    counts = torch.bincount(ids.flatten(), minlength=num_codes).double()
    probs = counts / counts.sum().clamp_min(1)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    used = int((counts > 0).sum())
    return {'codes_used': used, 'codebook_fraction': used / num_codes,
            'perplexity': float(entropy.exp())}
