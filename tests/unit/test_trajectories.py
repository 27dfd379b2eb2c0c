"""Trajectories at latent resolution: translation, partition, collisions, slot layout, saving."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from genaug.errors import InvalidArgument
from services.data.conditions import condition_paths, load_motion, save_motion
from services.models.motion.field import codec_motion_field
from services.models.motion.trajectories import (
    NUM_SPATIAL_SLOTS,
    compute_trajectories,
    displacement_cells,
    save_npy_atomic,
    save_npz_atomic,
    trajectory_list,
)


def translating_texture(num_frames: int, size: int, dx: int, dy: int) -> np.ndarray:
    """Smoothed noise moving by (dx, dy) px per frame (as in test_motion)."""
    margin = (abs(dx) + abs(dy)) * num_frames + 8
    noise = np.random.default_rng(0).random((size + 2 * margin,) * 2).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 1.5)
    noise = (noise - noise.min()) / (noise.max() - noise.min()) * 255
    crops = [
        noise[margin - t * dy : margin - t * dy + size, margin - t * dx : margin - t * dx + size]
        for t in range(num_frames)
    ]
    return np.stack(crops).round().astype(np.uint8)


def constant_field(num_frames: int, size: int, dx: float, dy: float) -> np.ndarray:
    field = np.zeros((num_frames - 1, 2, size, size), np.float32)
    field[:, 0], field[:, 1] = dx, dy
    return field


def random_field(num_frames: int, size: int, max_px: float, seed: int) -> np.ndarray:
    """Per-pixel random motion: many collisions on the grid."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-max_px, max_px, (num_frames - 1, 2, size, size)).astype(np.float32)


def links_of(trajs: list[np.ndarray]) -> set[tuple[tuple[int, ...], tuple[int, ...]]]:
    return {(tuple(a), tuple(b)) for tr in trajs for a, b in zip(tr[:-1], tr[1:], strict=True)}


def reference_sequences(trajs: list[np.ndarray], num_frames: int, r: int):
    """Slow re-statement of the reference's sequence building, from a given partition."""
    point_to_traj = {tuple(p): [tuple(q) for q in tr] for tr in trajs for p in tr}
    lmax = max(len(tr) for tr in trajs)
    seqs, masks = [], []
    for t in range(num_frames):
        for x in range(r):
            for y in range(r):
                neigh = [
                    (t, x + i, y + j)
                    for i in (-1, 0, 1)
                    for j in (-1, 0, 1)
                    if (i, j) != (0, 0) and 0 <= x + i < r and 0 <= y + j < r
                ]
                others = [p for p in point_to_traj[(t, x, y)] if p != (t, x, y)]
                seq = [(t, x, y), *neigh, *[(0, 0, 0)] * (8 - len(neigh))]
                seq += others + [(0, 0, 0)] * (lmax - 1 - len(others))
                mask = np.zeros(9 + lmax - 1, bool)
                mask[: 1 + len(neigh)] = True
                mask[9 : 9 + len(others)] = True
                seqs.append(seq)
                masks.append(mask)
    return np.array(seqs, np.int64), np.stack(masks)


# --- displacement in cells ---------------------------------------------------------------------


def test_displacement_cells_scale_sampling_and_rounding() -> None:
    field = np.zeros((1, 2, 64, 64), np.float32)
    field[0, 0, 8, 16] = 4.0  # 4 / 64 * 8 = 0.5 -> 0 (half to even, as torch.round)
    field[0, 0, 16, 8] = 12.0  # 1.5 -> 2
    field[0, 1, 0, 0] = -8.0  # -1 cell
    field[0, 1, 9, 9] = 100.0  # not a sampled pixel (samples are at multiples of 8)
    cells = displacement_cells(field)
    assert cells.shape == (1, 2, 8, 8) and cells.dtype == np.int64
    assert cells[0, 0, 1, 2] == 0 and cells[0, 0, 2, 1] == 2 and cells[0, 1, 0, 0] == -1
    assert np.count_nonzero(cells) == 2


def test_displacement_scales_x_by_width_and_y_by_height() -> None:
    field = np.zeros((1, 2, 32, 64), np.float32)
    field[0, 0], field[0, 1] = 16.0, 8.0  # quarter of the width, quarter of the height
    cells = displacement_cells(field, resolution=4)
    assert (cells[0, 0] == 1).all() and (cells[0, 1] == 1).all()


# --- following the motion ------------------------------------------------------------------


@pytest.mark.parametrize(("sx", "sy"), [(1, 0), (0, -1), (-1, 1)])
def test_trajectories_advance_one_cell_per_frame(sx: int, sy: int) -> None:
    # 8 px per frame at 64x64 with R = 8 is exactly one latent cell per frame.
    trajs = trajectory_list(constant_field(8, 64, 8.0 * sx, 8.0 * sy))
    starts = {tuple(tr[0]): tr for tr in trajs}
    for row in range(8):
        for col in range(8):
            expected = [
                (t, row + t * sy, col + t * sx)
                for t in range(8)
                if 0 <= row + t * sy < 8 and 0 <= col + t * sx < 8
            ]
            np.testing.assert_array_equal(starts[(0, row, col)], expected)


def test_codec_trajectories_follow_translation() -> None:
    """End to end: a texture moving (8, -8) px/frame at 96x96 (R = 12) moves one cell/frame."""
    sx, sy = 1, -1
    field = codec_motion_field(translating_texture(8, 96, 8 * sx, 8 * sy))
    trajs = trajectory_list(field)
    starts = {tuple(tr[0]): tr for tr in trajs}
    checked = 0
    for row in range(12):
        for col in range(12):
            path = [(t, row + t * sy, col + t * sx) for t in range(8)]
            # Only paths that stay off the outer ring, where new content enters.
            path = [p for p in path if 1 <= p[1] <= 10 and 1 <= p[2] <= 10]
            if len(path) < 2 or path[0][0] != 0:
                continue
            np.testing.assert_array_equal(starts[(0, row, col)][: len(path)], path)
            checked += 1
    assert checked >= 30


# --- partition and collisions ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_point_in_exactly_one_trajectory(seed: int) -> None:
    field = random_field(6, 48, 14.0, seed)
    trajs = trajectory_list(field, seed=seed)
    points = np.concatenate(trajs)
    assert len(points) == 6 * 6 * 6
    assert len({tuple(p) for p in points}) == len(points)
    assert any(len(tr) == 1 for tr in trajs) and any(len(tr) > 1 for tr in trajs)
    for tr in trajs:
        np.testing.assert_array_equal(tr[:, 0], np.arange(tr[0, 0], tr[0, 0] + len(tr)))


def test_collision_rule_keeps_exactly_one_link_per_target() -> None:
    field = random_field(5, 64, 16.0, 7)
    cells = displacement_cells(field)
    r = cells.shape[-1]
    candidates: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
    for t in range(cells.shape[0]):
        for row in range(r):
            for col in range(r):
                tr, tc = row + cells[t, 1, row, col], col + cells[t, 0, row, col]
                if 0 <= tr < r and 0 <= tc < r:
                    candidates.setdefault((t + 1, tr, tc), []).append((t, row, col))
    assert any(len(v) > 1 for v in candidates.values()), "the field must collide"
    kept = links_of(trajectory_list(field, seed=3))
    incoming = {}
    for src, dst in kept:
        assert src in candidates[dst]
        assert dst not in incoming
        incoming[dst] = src
    assert set(incoming) == set(candidates)  # every reachable target keeps one link


def test_collision_resolution_is_deterministic_by_seed() -> None:
    field = random_field(8, 64, 16.0, 11)
    a = compute_trajectories(field, seed=5)
    b = compute_trajectories(field, seed=5)
    np.testing.assert_array_equal(a.trajectories, b.trajectories)
    np.testing.assert_array_equal(a.trajectory_mask, b.trajectory_mask)
    others = [links_of(trajectory_list(field, seed=s)) for s in range(6, 10)]
    assert any(o != links_of(trajectory_list(field, seed=5)) for o in others)


# --- sequences -------------------------------------------------------------------------------


def test_sequences_match_the_reference_layout() -> None:
    # A different global shift per frame never collides, so the partition is unique.
    rng = np.random.default_rng(4)
    field = np.zeros((5, 2, 48, 48), np.float32)
    field += rng.integers(-1, 2, (5, 2, 1, 1)) * 8.0
    trajs = trajectory_list(field)
    expected_seq, expected_mask = reference_sequences(trajs, 6, 6)
    result = compute_trajectories(field)
    np.testing.assert_array_equal(result.trajectories, expected_seq)
    np.testing.assert_array_equal(result.trajectory_mask, expected_mask)


@pytest.mark.parametrize("seed", [0, 1])
def test_shapes_mask_and_slots(seed: int) -> None:
    num_frames, size = 7, 40
    field = random_field(num_frames, size, 12.0, seed)
    result = compute_trajectories(field, seed=seed)
    r = size // 8
    trajs = trajectory_list(field, seed=seed)
    lmax = max(len(tr) for tr in trajs)
    n, s = num_frames * r * r, NUM_SPATIAL_SLOTS + lmax - 1
    assert result.resolution == r and result.max_length == lmax
    assert result.num_trajectories == len(trajs)
    assert result.trajectories.shape == (n, s, 3) and result.trajectories.dtype == np.int64
    assert result.trajectory_mask.shape == (n, s) and result.trajectory_mask.dtype == np.bool_
    # Padding slots are (0, 0, 0) and masked; slot 0 is the query point itself.
    assert not result.trajectories[~result.trajectory_mask].any()
    assert result.trajectory_mask[:, 0].all()
    t, p = np.divmod(np.arange(n), r * r)
    np.testing.assert_array_equal(result.trajectories[:, 0], np.stack([t, p // r, p % r], 1))
    # Neighbours: 3 at a corner, 5 on an edge, 8 inside.
    neighbours = result.trajectory_mask[:, 1:NUM_SPATIAL_SLOTS].sum(1).reshape(num_frames, r, r)
    assert (neighbours[:, 0, 0] == 3).all() and (neighbours[:, 0, 2] == 5).all()
    assert (neighbours[:, 1:-1, 1:-1] == 8).all()
    # Trajectory slots: the other members of the point's trajectory, in time order.
    by_point = {tuple(pt): tr for tr in trajs for pt in tr}
    for q in range(0, n, 7):
        self_point = tuple(result.trajectories[q, 0])
        others = [pt for pt in by_point[self_point] if tuple(pt) != self_point]
        tail = result.trajectories[q, NUM_SPATIAL_SLOTS:][result.trajectory_mask[q, 9:]]
        np.testing.assert_array_equal(tail.reshape(-1, 3), np.reshape(others, (-1, 3)))


def test_pad_length_fixes_the_shape() -> None:
    field = constant_field(8, 64, 24.0, 0.0)  # 3 cells per frame: trajectories of length <= 3
    plain = compute_trajectories(field)
    assert plain.max_length == 3 and plain.trajectories.shape == (512, 11, 3)
    padded = compute_trajectories(field, pad_length=8)
    assert padded.trajectories.shape == (512, 16, 3)
    np.testing.assert_array_equal(padded.trajectories[:, :11], plain.trajectories)
    assert not padded.trajectory_mask[:, 11:].any()
    with pytest.raises(InvalidArgument) as info:
        compute_trajectories(field, pad_length=2)
    assert info.value.field == "pad_length"


def test_static_field_gives_full_length_trajectories_in_the_last_slots() -> None:
    result = compute_trajectories(np.zeros((7, 2, 256, 256), np.float32))
    assert result.trajectories.shape == (8 * 32 * 32, 16, 3) and result.num_trajectories == 1024
    # What MFA gathers: slot 0 plus the last 7 slots = the same cell in all 8 frames.
    gathered = np.concatenate([result.trajectories[:, :1], result.trajectories[:, -7:]], 1)
    assert result.trajectory_mask[:, -7:].all()
    assert (gathered[:, :, 1:] == gathered[:, :1, 1:]).all()
    assert (np.sort(gathered[:, :, 0], axis=1) == np.arange(8)).all()


@pytest.mark.parametrize(
    ("field", "kwargs", "name"),
    [
        (np.zeros((7, 3, 64, 64), np.float32), {}, "motion_field.shape"),
        (np.zeros((2, 64, 64), np.float32), {}, "motion_field.shape"),
        (np.full((1, 2, 64, 64), np.nan, np.float32), {}, "motion_field"),
        (np.zeros((1, 2, 64, 64), np.complex64), {}, "motion_field.dtype"),
        ([[0.0]], {}, "motion_field"),
        (np.zeros((1, 2, 64, 64), np.float32), {"resolution": 0}, "resolution"),
        (np.zeros((1, 2, 64, 64), np.float32), {"resolution": 65}, "resolution"),
        (np.zeros((999, 2, 64, 64), np.float32), {"resolution": 64}, "motion_field.shape"),
    ],
)
def test_bad_fields_are_invalid_argument(field, kwargs, name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        compute_trajectories(field, **kwargs)
    assert info.value.field == name


# --- saving ------------------------------------------------------------------------------------


def test_atomic_saves_round_trip_without_pickle(tmp_path) -> None:
    result = compute_trajectories(constant_field(4, 32, 8.0, 0.0))
    field = constant_field(4, 32, 8.0, 0.0)
    paths = condition_paths(tmp_path, "DS", "clip.avi")
    save_motion(paths, field, result.trajectories, result.trajectory_mask)
    save_npz_atomic(tmp_path / "extra.npz", a=np.arange(3))
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["DS_motion_field/clip.npy", "DS_motion_field_trajectory/clip.npz", "extra.npz"]
    loaded_field, trajectories, mask = load_motion(paths)
    np.testing.assert_array_equal(loaded_field, field)
    np.testing.assert_array_equal(trajectories, result.trajectories)
    np.testing.assert_array_equal(mask, result.trajectory_mask)
    # The one schema keeps only the arrays; resolution and max length are in their shapes.
    with np.load(paths.trajectory, allow_pickle=False) as data:
        assert sorted(data.files) == ["trajectories", "trajectory_mask"]
    assert result.resolution == 4 and trajectories.shape[0] == 4 * 4 * 4
    assert trajectories.shape[1] == NUM_SPATIAL_SLOTS + result.max_length - 1
    # Overwrite in place, still no temporary left over.
    save_npy_atomic(paths.motion_field, np.zeros(2))
    assert np.load(paths.motion_field, allow_pickle=False).shape == (2,)
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 3


def test_failed_save_leaves_nothing_behind(tmp_path) -> None:
    with pytest.raises(ValueError):
        save_npy_atomic(tmp_path / "bad.npy", np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        save_npz_atomic(tmp_path / "bad.npz", a=np.array([{}], dtype=object))
    assert list(tmp_path.iterdir()) == []
