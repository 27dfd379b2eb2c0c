"""Motion-field trajectories for the generator's Motion Field Attention (MFA).

Re-implements the reference `sample_trajectories_based_on_motion_fields` for one resolution `R`
(the reference keeps only `R = 32` for 256x256 clips, i.e. `H / 8`, the latent grid):

1. **Displacement in cells.** The field `(T-1, 2, H, W)` is divided by `H` (channel 1, y) and `W`
   (channel 0, x), nearest-downsampled to `R x R` (sample pixel `(i * H // R, j * W // R)`, as
   torch `interpolate(mode="nearest")`), multiplied by `R` and rounded half to even
   (`torch.round`), giving integer displacements in grid cells.
2. **Links.** Grid point `(t, row, col)`, `t < T-1`, links to `(t+1, row + dy, col + dx)` when that
   target lies in the grid. The displacement is read from field `t` at the point itself (as the
   reference does, although the codec field is indexed at the destination).
3. **Collisions.** When several points link to one target, one link, drawn uniformly with
   `numpy.random.default_rng(seed)`, is kept and the others are dropped (those trajectories end
   there). The reference used the unseeded `random` module; here the draw is deterministic.
4. **Trajectories.** Links are chained; every point of the `T x R x R` grid belongs to exactly one
   trajectory (points without links are singletons). `Lmax` is the longest length (`<= T`).
5. **Sequences.** One attention sequence per query point, see `compute_trajectories`.

Coordinates are `(t, row, col)` triples: row is the height index, col the width index. The
reference calls them `(t, x, y)` with x = row; MFA gathers `key[b, t, x, y]` on a
`(b, f, h, w)` tensor, so these triples feed it unchanged.

All outputs are plain numpy arrays; `services.data.conditions` stores them (one `.npz` schema)
without pickling (the reference pickled a dict of torch tensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from genaug.errors import InvalidArgument
from services.data import layout

DEFAULT_DOWNSAMPLE = 8
NUM_SPATIAL_SLOTS = 9  # the query point + its 3x3 neighbourhood (8)
# Cap on N * S (one int64 triple each): 2^24 slots are 400 MB of indices.
MAX_SEQUENCE_SLOTS = 1 << 24

# Neighbour offsets (d_row, d_col) in the reference's order: row-major, centre excluded.
_OFFSETS = np.array([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)])


@dataclass(frozen=True)
class TrajectoryResult:
    """Sequences for MFA at one resolution.

    Attributes:
        trajectories: int64 `(N, S, 3)`, `N = T*R*R`, `S = 9 + L - 1`, triples `(t, row, col)`.
        trajectory_mask: bool `(N, S)`, False on padding slots (whose triples are `(0, 0, 0)`).
        resolution: `R`.
        max_length: `Lmax`, the longest trajectory (`L = Lmax` unless `pad_length` was given).
        num_trajectories: trajectories in the partition, singletons included.
    """

    trajectories: np.ndarray
    trajectory_mask: np.ndarray
    resolution: int
    max_length: int
    num_trajectories: int


def _validate_field(motion_field: object) -> np.ndarray:
    if not isinstance(motion_field, np.ndarray):
        raise InvalidArgument("motion_field", f"expected a numpy array, got {type(motion_field)}")
    if not (
        np.issubdtype(motion_field.dtype, np.floating)
        or np.issubdtype(motion_field.dtype, np.integer)
    ):
        raise InvalidArgument("motion_field.dtype", f"expected reals, got {motion_field.dtype}")
    if motion_field.ndim != 4 or motion_field.shape[1] != 2 or min(motion_field.shape) < 1:
        raise InvalidArgument(
            "motion_field.shape", f"expected (T-1, 2, H, W), got {motion_field.shape}"
        )
    field = motion_field.astype(np.float64)
    if not np.isfinite(field).all():
        raise InvalidArgument("motion_field", "contains NaN or infinite values")
    return field


def _resolve_resolution(resolution: int | None, height: int, width: int) -> int:
    if resolution is None:
        resolution = height // DEFAULT_DOWNSAMPLE
    if not 1 <= resolution <= min(height, width):
        raise InvalidArgument(
            "resolution", f"{resolution} is outside [1, {min(height, width)}] for {height}x{width}"
        )
    return int(resolution)


def displacement_cells(motion_field: np.ndarray, resolution: int | None = None) -> np.ndarray:
    """Step 1: the field as integer grid-cell displacements.

    Args:
        motion_field: `(T-1, 2, H, W)` pixels per frame, channel 0 = x.
        resolution: grid size `R` (default `H // 8`).

    Returns:
        int64 `(T-1, 2, R, R)`, channel 0 = d_col (x), channel 1 = d_row (y).
    """
    field = _validate_field(motion_field)
    _, _, height, width = field.shape
    r = _resolve_resolution(resolution, height, width)
    rows = np.arange(r) * height // r
    cols = np.arange(r) * width // r
    sampled = field[:, :, rows][:, :, :, cols]
    scale = np.array([width, height], np.float64)[None, :, None, None]
    return np.round(sampled / scale * r).astype(np.int64)


def _links(cells: np.ndarray, seed: int) -> np.ndarray:
    """Steps 2-3: `next[t, p]` = flat grid index of the kept target in frame t+1, or -1."""
    steps, _, r, _ = cells.shape
    rng = np.random.default_rng(seed)
    grid_rows, grid_cols = np.divmod(np.arange(r * r), r)
    nxt = np.full((steps, r * r), -1, np.int64)
    for t in range(steps):
        tr = grid_rows + cells[t, 1].ravel()
        tc = grid_cols + cells[t, 0].ravel()
        src = np.flatnonzero((tr >= 0) & (tr < r) & (tc >= 0) & (tc < r))
        tgt = tr[src] * r + tc[src]
        # Sort by target, then by a random priority: the last of each group wins.
        order = np.lexsort((rng.random(len(src)), tgt))
        tgt_sorted = tgt[order]
        wins = np.append(tgt_sorted[1:] != tgt_sorted[:-1], True)
        nxt[t, src[order[wins]]] = tgt_sorted[wins]
    return nxt


def _trajectory_ids(nxt: np.ndarray) -> np.ndarray:
    """Step 4: `ids[t, p]`, numbered by start frame, then row-major start position."""
    steps, points = nxt.shape
    ids = np.empty((steps + 1, points), np.int64)
    ids[0] = np.arange(points)
    next_id = points
    for t in range(steps):
        linked = nxt[t] >= 0
        row = np.full(points, -1, np.int64)
        row[nxt[t, linked]] = ids[t, linked]
        fresh = np.flatnonzero(row < 0)
        row[fresh] = next_id + np.arange(len(fresh))
        next_id += len(fresh)
        ids[t + 1] = row
    return ids


def _partition(motion_field: np.ndarray, resolution: int | None, seed: int) -> np.ndarray:
    """Steps 1-4: `ids (T, R*R)`, the trajectory of every grid point."""
    return _trajectory_ids(_links(displacement_cells(motion_field, resolution), seed))


def _members(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per trajectory, its points' flat indices `t*R*R + p` in time order, padded with -1.

    Returns:
        `(members (num_traj, Lmax), position (N,))`: position = rank of each point in its
        trajectory.
    """
    flat = ids.ravel()  # t-major, so a stable sort keeps each trajectory in time order
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(flat)) - starts[flat[order]]
    members = np.full((len(counts), int(counts.max())), -1, np.int64)
    members[flat[order], rank] = order
    position = np.empty(len(flat), np.int64)
    position[order] = rank
    return members, position


def trajectory_list(
    motion_field: np.ndarray, resolution: int | None = None, seed: int = 0
) -> list[np.ndarray]:
    """The partition of the grid into trajectories (steps 1-4), for tests and debugging.

    Args:
        motion_field: `(T-1, 2, H, W)`, channel 0 = x.
        resolution: grid size `R` (default `H // 8`).
        seed: collision-resolution seed.

    Returns:
        One int64 `(L, 3)` array of `(t, row, col)` per trajectory, in time order; trajectories
        ordered by start frame, then row-major start cell. Together they hold every grid point once.
    """
    ids = _partition(motion_field, resolution, seed)
    r = math.isqrt(ids.shape[1])
    members, _ = _members(ids)
    out = []
    for row in members:
        pts = row[row >= 0]
        t, p = np.divmod(pts, r * r)
        out.append(np.stack([t, p // r, p % r], axis=1))
    return out


def _check_size(n: int, slots: int) -> None:
    if n * slots > MAX_SEQUENCE_SLOTS:
        raise InvalidArgument(
            "motion_field.shape", f"{n} x {slots} trajectory slots exceed {MAX_SEQUENCE_SLOTS}"
        )


def _neighbour_slots(r: int) -> np.ndarray:
    """`(R*R, 8)` flat spatial index of each cell's valid neighbours, compacted, -1 padded."""
    rows, cols = np.divmod(np.arange(r * r), r)
    nr = rows[:, None] + _OFFSETS[:, 0]
    nc = cols[:, None] + _OFFSETS[:, 1]
    valid = (nr >= 0) & (nr < r) & (nc >= 0) & (nc < r)
    flat = np.where(valid, nr * r + nc, -1)
    # Valid neighbours first, keeping the offset order (as the reference builds its list).
    order = np.argsort(~valid, axis=1, kind="stable")
    return np.take_along_axis(flat, order, axis=1)


def compute_trajectories(
    motion_field: np.ndarray,
    resolution: int | None = None,
    seed: int = 0,
    pad_length: int | None = None,
) -> TrajectoryResult:
    """MFA sequences (`traj{R}` / `mask{R}` of the reference) from a motion field.

    Query points are numbered `q = t*R*R + row*R + col` (frame-major, then row-major, as the
    model's `(f n)` / `(h w)` layout). Slot layout of `trajectories[q]`, `S = 9 + L - 1`:

    - slot 0: the point itself `(t, row, col)`; always valid.
    - slots 1..8: its spatial neighbours in the same frame, offsets `(d_row, d_col)` in row-major
      order without `(0, 0)`; at the grid border the valid ones come first and the remaining
      slots are `(0, 0, 0)`, masked (the reference's compaction, kept so that masks match).
    - slots 9..S-1: the other points of its trajectory in time order, then `(0, 0, 0)` padding,
      masked, up to `L - 1` slots.

    The model's MFA (video length `T`) attends over slot 0 plus the **last `T-1` slots**. Those
    are exactly the trajectory slots when `L == T`, the usual case (static content makes
    full-length trajectories); `pad_length=T` guarantees it and fixes `S = 8 + T` whatever the
    content. With `L < T` the last `T-1` slots also cover some neighbour slots, as in the
    reference.

    Args:
        motion_field: `(T-1, 2, H, W)` pixels per frame, channel 0 = x (`motion.extract_motion`).
        resolution: grid size `R` (default `H // 8`, i.e. 32 for 256x256).
        seed: seed of the collision draw; same inputs and seed give identical outputs.
        pad_length: pad trajectory slots to `pad_length - 1` instead of `Lmax - 1`; must be
            `>= Lmax`.

    Returns:
        `TrajectoryResult`: `trajectories` int64 `(T*R*R, S, 3)` and `trajectory_mask` bool
        `(T*R*R, S)`.

    Raises:
        InvalidArgument: bad `motion_field`, `resolution` or `pad_length`, or an output larger
            than `MAX_SEQUENCE_SLOTS` slots.
    """
    field = _validate_field(motion_field)
    r = _resolve_resolution(resolution, *field.shape[2:])
    num_frames, points = field.shape[0] + 1, r * r
    n = num_frames * points
    _check_size(n, NUM_SPATIAL_SLOTS)  # before the work: S >= 9 whatever the trajectories
    ids = _partition(field, r, seed)
    members, position = _members(ids)
    lmax = members.shape[1]
    length = lmax if pad_length is None else int(pad_length)
    if length < lmax:
        raise InvalidArgument("pad_length", f"{length} < the longest trajectory ({lmax})")
    slots = NUM_SPATIAL_SLOTS + length - 1
    _check_size(n, slots)

    seq = np.full((n, slots), -1, np.int64)
    q = np.arange(n)
    t_of_q = q // points
    seq[:, 0] = q
    neigh = _neighbour_slots(r)[q % points]
    seq[:, 1:NUM_SPATIAL_SLOTS] = np.where(neigh >= 0, t_of_q[:, None] * points + neigh, -1)
    if lmax > 1:
        # The trajectory without the point itself: skip column `position[q]` of its members row.
        k = np.arange(lmax - 1)
        cols = k[None, :] + (k[None, :] >= position[:, None])
        others = members[ids.ravel()[:, None], cols]
        seq[:, NUM_SPATIAL_SLOTS : NUM_SPATIAL_SLOTS + lmax - 1] = others

    mask = seq >= 0
    idx = np.where(mask, seq, 0)
    t, p = np.divmod(idx, points)
    trajectories = np.stack([t, p // r, p % r], axis=-1)
    return TrajectoryResult(
        trajectories=trajectories,
        trajectory_mask=mask,
        resolution=r,
        max_length=lmax,
        num_trajectories=len(members),
    )


# Kept under these names for callers of this module; the one implementation is in the layout.
save_npy_atomic = layout.save_npy
save_npz_atomic = layout.save_npz
