from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from larp.eval import fvd
from larp.eval.fvd import DetectorError, FeatureStats, frechet_distance
from tests.eval.conftest import StandInI3D


def random_features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + shift


def eig_frechet(mu1, s1, mu2, s2) -> float:
    """Independent reference: tr sqrt(S1 S2) = Σ sqrt(eig(sqrt(S1) S2 sqrt(S1))), symmetric via eigh."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


# ------------------------------------------------------------------------------------------ distance
def test_identical_statistics_give_zero():
    stats = FeatureStats(dim=400).add(random_features(1000, 400, seed=0))
    assert abs(fvd.fvd(stats, stats)) < 1e-6


def test_matches_independent_eigen_computation():
    a = FeatureStats(dim=64).add(random_features(500, 64, seed=1))
    b = FeatureStats(dim=64).add(random_features(700, 64, seed=2, shift=0.3))
    ours = fvd.fvd(a, b)
    ref = eig_frechet(a.mean, a.cov, b.mean, b.cov)
    assert ours > 1.0
    assert ours == pytest.approx(ref, rel=1e-8)


def test_hand_computed_one_dimensional_case():
    # N(0, 1) vs N(1, 4): (0-1)^2 + 1 + 4 - 2*sqrt(1*4) = 2
    assert frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([1.0]), np.array([[4.0]])) == pytest.approx(2.0)


def test_singular_covariances_use_the_eps_offset():
    # rank-deficient covariances (fewer samples than dimensions): still finite and matches the reference
    a = FeatureStats(dim=32).add(random_features(10, 32, seed=3))
    b = FeatureStats(dim=32).add(random_features(12, 32, seed=4))
    value = fvd.fvd(a, b)
    assert np.isfinite(value)
    assert value == pytest.approx(eig_frechet(a.mean, a.cov, b.mean, b.cov), rel=1e-4)


def test_mean_and_cov_divide_by_n():
    x = random_features(50, 8, seed=5)
    stats = FeatureStats(dim=8).add(x)
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False, bias=True), rtol=1e-9, atol=1e-12)


def test_fvd_needs_two_vectors_and_matching_dims():
    one = FeatureStats(dim=4).add(np.ones((1, 4)))
    two = FeatureStats(dim=4).add(np.ones((2, 4)))
    with pytest.raises(ValueError, match="real statistics hold 1 feature vectors"):
        fvd.fvd(one, two)
    with pytest.raises(ValueError, match=r"expected features of shape \(n, 4\), got \(2, 5\)"):
        two.add(np.ones((2, 5)))
    with pytest.raises(ValueError, match="cannot merge statistics of 3-d features into 4-d"):
        two.merge(FeatureStats(dim=3))


# ------------------------------------------------------------------------------------------ statistics
def test_merged_shards_equal_single_run_exactly():
    # integer-valued features make every float64 sum exact, so shard order cannot matter
    x = np.random.default_rng(6).integers(-50, 50, size=(90, 16)).astype(np.float64)
    single = FeatureStats(dim=16).add(x)
    shards = [FeatureStats(dim=16).add(x[a:b]) for a, b in ((0, 7), (7, 50), (50, 90))]
    merged = FeatureStats(dim=16)
    for shard in reversed(shards):
        merged.merge(shard)
    assert merged.count == single.count == 90
    assert np.array_equal(merged.feature_sum, single.feature_sum)
    assert np.array_equal(merged.outer_sum, single.outer_sum)
    other = FeatureStats(dim=16).add(x[::-1] + 3)
    assert fvd.fvd(merged, other) == fvd.fvd(single, other)


def test_merged_float_shards_match_single_run():
    x = random_features(300, 32, seed=7)
    single = FeatureStats(dim=32).add(x)
    merged = FeatureStats(dim=32).add(x[:100]).merge(FeatureStats(dim=32).add(x[100:]))
    np.testing.assert_allclose(merged.outer_sum, single.outer_sum, rtol=1e-12, atol=1e-9)
    ref = FeatureStats(dim=32).add(random_features(200, 32, seed=8))
    assert fvd.fvd(merged, ref) == pytest.approx(fvd.fvd(single, ref), rel=1e-9)


def test_npz_round_trip_is_exact(tmp_path: Path):
    stats = FeatureStats(dim=12).add(random_features(40, 12, seed=9))
    path = stats.save(tmp_path / "sub" / "stats.npz")
    loaded = FeatureStats.load(path)
    assert loaded.count == 40 and loaded.dim == 12
    assert np.array_equal(loaded.feature_sum, stats.feature_sum)
    assert np.array_equal(loaded.outer_sum, stats.outer_sum)
    assert sorted(p.name for p in path.parent.iterdir()) == ["stats.npz"]  # no temp file left behind


@pytest.mark.parametrize("case, message", [
    ("missing_key", r"missing keys \['outer_sum'\]"),
    ("bad_shape", r"shapes must be \(D,\) and \(D, D\), found \(4,\) and \(4, 3\)"),
    ("pickled", r"array 'feature_sum' holds Python objects"),
    ("garbage", "is not valid feature statistics"),
    ("npy", "a single .npy array"),
    ("negative", "count must be a non-negative integer"),
])
def test_bad_npz_files_are_refused(tmp_path: Path, case: str, message: str):
    path = tmp_path / "bad.npz"
    good = {"count": np.int64(3), "feature_sum": np.zeros(4), "outer_sum": np.zeros((4, 4))}
    if case == "missing_key":
        np.savez(path, count=good["count"], feature_sum=good["feature_sum"])
    elif case == "bad_shape":
        np.savez(path, **{**good, "outer_sum": np.zeros((4, 3))})
    elif case == "pickled":
        np.savez(path, **{**good, "feature_sum": np.array([{"a": 1}], dtype=object)})
    elif case == "garbage":
        path.write_bytes(b"not an archive at all")
    elif case == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif case == "negative":
        np.savez(path, **{**good, "count": np.int64(-1)})
    with pytest.raises(ValueError, match=message) as info:
        FeatureStats.load(path)
    assert str(path) in str(info.value)


def test_missing_npz_names_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.npz does not exist"):
        FeatureStats.load(tmp_path / "nope.npz")


def _npz_with_member(path: Path, name: str, header_shape: tuple[int, ...], payload: bytes) -> None:
    """An .npz whose member `name` has a .npy header declaring `header_shape` float64, then `payload`."""
    import io
    import zipfile

    good = {"count": np.int64(3), "feature_sum": np.zeros(4), "outer_sum": np.zeros((4, 4))}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in good.items():
            buffer = io.BytesIO()
            if key == name:
                np.lib.format.write_array_header_1_0(
                    buffer, {"descr": "<f8", "fortran_order": False, "shape": header_shape})
                buffer.write(payload)
            else:
                np.save(buffer, value)
            zf.writestr(f"{key}.npy", buffer.getvalue())


def test_a_member_declaring_gigabytes_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "bomb.npz"
    _npz_with_member(path, "outer_sum", (1 << 15, 1 << 15), b"\0" * 64)  # declares 8 GiB, holds 64 bytes
    reads = []
    real_read = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda f, **k: reads.append(1) or real_read(f, **k))
    with pytest.raises(ValueError, match=r"array 'outer_sum' declares \(32768, 32768\) float64 "
                                         r"\(8,589,934,592 bytes\), more than the 128 bytes allowed"):
        FeatureStats.load(path)
    assert len(reads) == 2  # count and feature_sum; outer_sum was refused from its header
    assert path.stat().st_size < 2000


def test_a_member_inflating_beyond_its_header_is_refused(tmp_path: Path):
    path = tmp_path / "bomb.npz"
    _npz_with_member(path, "outer_sum", (4, 4), b"\0" * (4 << 20))  # 16 values, then 4 MiB of zeros
    assert path.stat().st_size < 20_000
    with pytest.raises(ValueError, match=r"array 'outer_sum' unpacks to 4,194,.* bytes, more than its 128 bytes"):
        FeatureStats.load(path)


def test_saved_statistics_honour_the_umask(tmp_path: Path):
    import os

    old = os.umask(0o027)
    try:
        path = FeatureStats(dim=3).add(np.ones((2, 3))).save(tmp_path / "stats.npz")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


# ------------------------------------------------------------------------------------------ detector file
def test_resolution_order_path_then_env_then_cache(trusted_standin: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    explicit = shutil.copy(trusted_standin, tmp_path / "explicit.pt")
    env = shutil.copy(trusted_standin, tmp_path / "env.pt")
    cached = fvd.cache_dir() / fvd.I3D_FILENAME
    cached.parent.mkdir(parents=True)
    shutil.copy(trusted_standin, cached)
    monkeypatch.setenv(fvd.ENV_I3D_PATH, str(env))
    assert fvd.resolve_detector_path(explicit) == Path(explicit)
    assert fvd.resolve_detector_path() == Path(env)
    monkeypatch.delenv(fvd.ENV_I3D_PATH)
    assert fvd.resolve_detector_path() == cached


def test_named_but_missing_paths_do_not_fall_back(trusted_standin: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(DetectorError, match="--i3d_path .*nowhere.pt does not exist"):
        fvd.resolve_detector_path(tmp_path / "nowhere.pt")
    monkeypatch.setenv(fvd.ENV_I3D_PATH, str(tmp_path / "gone.pt"))
    with pytest.raises(DetectorError, match=f"{fvd.ENV_I3D_PATH}=.*gone.pt does not exist"):
        fvd.resolve_detector_path()


def test_wrong_size_and_wrong_hash_are_refused_before_loading(trusted_standin: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("torch.jit.load called on an unverified file")

    monkeypatch.setattr(torch.jit, "load", must_not_load)
    short = tmp_path / "short.pt"
    short.write_bytes(b"x" * 100)
    with pytest.raises(DetectorError, match=f"expected {fvd.I3D_FILENAME} of 51,235,320 bytes.*found 100 bytes"):
        fvd.load_detector(short)
    tampered = tmp_path / "tampered.pt"
    data = bytearray(trusted_standin.read_bytes())
    data[-1] ^= 0xFF  # same size as a trusted file, different content
    tampered.write_bytes(bytes(data))
    with pytest.raises(DetectorError, match=f"expected SHA-256 {fvd.I3D_SHA256}.*found SHA-256 [0-9a-f]{{64}}"):
        fvd.load_detector(tampered)


def test_offline_without_a_file_gives_one_clear_error(trusted_standin: Path):
    with pytest.raises(DetectorError) as info:
        fvd.load_detector()
    text = str(info.value)
    for needle in (fvd.I3D_FILENAME, fvd.I3D_SHA256, fvd.I3D_DROPBOX_URL, fvd.I3D_HF_REPO,
                   str(fvd.cache_dir() / fvd.I3D_FILENAME), fvd.ENV_I3D_PATH, "--i3d_path",
                   "network disabled in tests"):
        assert needle in text
    assert list(fvd.cache_dir().iterdir()) == []  # no partial download left


def test_offline_mode_tries_no_mirror(trusted_standin: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(fvd, "_download_dropbox", lambda dest: pytest.fail("tried Dropbox"))
    monkeypatch.setattr(fvd, "_download_hf", lambda dest: pytest.fail("tried Hugging Face"))
    with pytest.raises(DetectorError, match="HF_HUB_OFFLINE is set, so nothing was downloaded.*Download it on a "
                                            "connected machine"):
        fvd.load_detector()


def test_without_network_no_mirror_is_tried(trusted_standin: Path, monkeypatch: pytest.MonkeyPatch):
    """A host that does not resolve fails at once, instead of after the hub client's retries."""
    monkeypatch.setattr(fvd, "host_resolves", lambda url: False)
    monkeypatch.setattr(fvd, "_download_dropbox", lambda dest: pytest.fail("tried Dropbox"))
    monkeypatch.setattr(fvd, "_download_hf", lambda dest: pytest.fail("tried Hugging Face"))
    with pytest.raises(DetectorError, match=r"Dropbox: www.dropbox.com cannot be resolved \(no network\?\); "
                                            r"Hugging Face: huggingface.co cannot be resolved"):
        fvd.load_detector()


def test_download_verifies_then_renames(trusted_standin: Path, monkeypatch: pytest.MonkeyPatch):
    def bad_mirror(dest: Path) -> None:
        dest.write_bytes(b"<html>a login page</html>")

    def good_mirror(dest: Path) -> None:
        shutil.copyfile(trusted_standin, dest)

    monkeypatch.setattr(fvd, "_download_dropbox", bad_mirror)
    monkeypatch.setattr(fvd, "_download_hf", good_mirror)
    path = fvd.resolve_detector_path()
    assert path == fvd.cache_dir() / fvd.I3D_FILENAME
    assert path.read_bytes() == trusted_standin.read_bytes()
    assert [p.name for p in fvd.cache_dir().iterdir()] == [fvd.I3D_FILENAME]


def test_all_mirrors_bad_reports_each(trusted_standin: Path, monkeypatch: pytest.MonkeyPatch):
    def bad_mirror(dest: Path) -> None:
        dest.write_bytes(b"short")

    monkeypatch.setattr(fvd, "_download_dropbox", bad_mirror)
    with pytest.raises(DetectorError, match="Dropbox: DetectorError: refusing.*found 5 bytes.*Hugging Face: OSError"):
        fvd.resolve_detector_path()
    assert not (fvd.cache_dir() / fvd.I3D_FILENAME).exists()


# ------------------------------------------------------------------------------------------ features
def test_standin_loads_through_the_verified_path_and_extracts(trusted_standin: Path):
    detector = fvd.load_detector(trusted_standin)
    videos = torch.rand(5, 3, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    feats = fvd.extract_features(detector, videos, batch_size=2)
    assert feats.dtype == np.float64 and feats.shape == (5, 400)
    expected = StandInI3D()((videos - 0.5) * 2).detach().double().numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-5)
    extractor = fvd.I3DFeatureExtractor(detector, batch_size=5)
    np.testing.assert_allclose(extractor(videos), feats, rtol=1e-6, atol=1e-6)
    assert extractor.device == torch.device("cpu")


def test_extract_features_rejects_bad_videos(trusted_standin: Path):
    detector = fvd.load_detector(trusted_standin)
    with pytest.raises(ValueError, match=r"expected videos as a float tensor \(B, 3, T, H, W\).*\(2, 8, 3, 16, 16\)"):
        fvd.extract_features(detector, torch.rand(2, 8, 3, 16, 16))
    with pytest.raises(ValueError, match="got dtype torch.uint8"):
        fvd.extract_features(detector, torch.zeros(2, 3, 8, 16, 16, dtype=torch.uint8))
