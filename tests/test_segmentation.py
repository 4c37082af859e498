"""Segmentation: MSD-layout fixtures written with nibabel, demo-ct, Dice/IoU against MONAI, the U-Net under Opacus,
DP training end to end, and the imprint attack on the U-Net."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dpaudit.audit.segmentation import dice_iou_per_volume, segmentation_metrics
from dpaudit.errors import DataError
from dpaudit.volumes import LIVER_WINDOW, is_segmentation_dataset, load_segmentation_splits

nib = pytest.importorskip("nibabel")


def write_msd(root: Path, rng: np.random.Generator, *, n: int = 5, shape=(20, 20, 6), labels=None,
              bad_value: int | None = None, mismatch: bool = False, tumour: bool = True) -> Path:
    """A tiny Task03_Liver-like folder: CT in HU, liver (1) and tumour (2); volume 0 has no tumour (nor any
    volume without ``tumour``: a two-class task)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = {"name": "Liver", "modality": {"0": "CT"},
            "labels": labels or {"0": "background", "1": "liver", "2": "cancer"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    for v in range(n):
        vol = rng.normal(-500, 300, size=shape).astype(np.float32)
        lab = np.zeros(shape, dtype=np.uint8)
        lab[5:15, 5:15, 1:5] = 1
        vol[lab == 1] = 100
        if v != 0 and tumour:
            lab[8:11, 8:11, 2:4] = 2
        if bad_value is not None and v == 1:
            lab[0, 0, 0] = bad_value
        lshape = shape if not (mismatch and v == 2) else (shape[0], shape[1], shape[2] + 1)
        lab_out = np.zeros(lshape, dtype=np.uint8)
        lab_out[..., :shape[2]] = lab
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(root / "imagesTr" / f"liver_{v}.nii.gz"))
        nib.save(nib.Nifti1Image(lab_out, np.eye(4)), str(root / "labelsTr" / f"liver_{v}.nii.gz"))
    return root


def test_msd_layout_loads_volume_disjoint_slices_with_the_liver_window(tmp_path, rng) -> None:
    root = write_msd(tmp_path / "Task03_Liver", rng)
    s = load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)
    assert s.label_names == ("background", "liver", "cancer")
    assert s.window == LIVER_WINDOW
    assert s.train.image_shape == (1, 16, 16) and s.train.labels.shape[1:] == (16, 16)
    vols = [set(p.volume_ids) for p in (s.train, s.val, s.test)]
    assert not (vols[0] & vols[1]) and not (vols[0] & vols[2]) and not (vols[1] & vols[2])
    assert sum(len(v) for v in vols) == 5
    assert s.records_per_patient == 6 and s.n_train_volumes == len(vols[0])
    # Windowing: -100 HU and below map to 0, 200 HU and above to 1, 100 HU (the liver) to 2/3.
    liver = s.train.labels == 1
    assert float(s.train.images[:, 0][liver].mean()) == pytest.approx(200 / 300, abs=0.05)
    assert float(s.train.images.min()) >= 0 and float(s.train.images.max()) <= 1
    assert set(np.unique(s.train.labels.numpy())) <= {0, 1, 2}


def test_background_share_keeps_foreground_slices_of_the_training_split(tmp_path, rng) -> None:
    root = write_msd(tmp_path / "t", rng)
    s = load_segmentation_splits(f"msd:{root}", image_size=16, seed=0, background_share=0.0)
    assert all(int(y.max()) > 0 for y in s.train.labels)  # only foreground slices
    assert len(s.train) == 4 * s.n_train_volumes
    assert len(s.test) == 6 * s.test.n_volumes  # evaluation keeps whole volumes


def test_msd_errors_name_the_volume_and_the_fix(tmp_path, rng) -> None:
    root = write_msd(tmp_path / "bad", rng, bad_value=7)
    with pytest.raises(DataError, match=r"volume 'liver_1' \('[^']*labelsTr/liver_1\.nii\.gz'\) label values.*0\.\.2.*got 7\."):
        load_segmentation_splits(f"msd:{root}", image_size=16, max_volumes=None)
    root = write_msd(tmp_path / "mismatch", rng, mismatch=True)
    with pytest.raises(DataError, match=r"volume 'liver_2' label map shape.*\(20, 20, 6\).*got \(20, 20, 7\)"):
        load_segmentation_splits(f"msd:{root}", image_size=16)
    with pytest.raises(DataError, match=r"dataset\.json"):
        load_segmentation_splits(f"msd:{tmp_path}", image_size=16)
    # A 4-D image (two modalities): the error names the file (relative to the dataset's folder), not only the volume.
    root = write_msd(tmp_path / "four", rng)
    path = root / "imagesTr" / "liver_2.nii.gz"
    arr = np.asarray(nib.load(str(path)).dataobj)
    nib.save(nib.Nifti1Image(np.stack([arr, arr], axis=-1), np.eye(4)), str(path))
    with pytest.raises(DataError, match=r"volume 'liver_2' image 'imagesTr/liver_2\.nii\.gz' dimensions must be a "
                                        r"3-D volume .*got \(20, 20, 6, 2\)"):
        load_segmentation_splits(f"msd:{root}", image_size=16)
    with pytest.raises(DataError, match="window"):
        load_segmentation_splits("demo-ct", image_size=16, window=(200, -100))


@pytest.mark.parametrize(("folder", "value", "what"), [("imagesTr", np.nan, "image"), ("imagesTr", -np.inf, "image"),
                                                    ("labelsTr", np.nan, "label map")])
def test_msd_non_finite_voxels_are_refused_naming_the_volume_and_voxel(tmp_path, rng, folder, value, what) -> None:
    root = write_msd(tmp_path / "Task03_Liver", rng)
    path = root / folder / "liver_3.nii.gz"
    arr = np.asarray(nib.load(str(path)).dataobj).astype(np.float32)
    arr[2, 3, 4] = value
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    with pytest.raises(DataError, match=rf"volume 'liver_3' \('[^']*{folder}/liver_3\.nii\.gz'\): its {what} holds a non-finite voxel value .*voxel 2, 3, 4"):
        load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)


def _reversed(*axes: int, shape=(20, 20, 6)) -> np.ndarray:
    """The affine of an array stored with ``axes`` reversed whose world positions are those of the unreversed
    array under the identity affine."""
    a = np.eye(4)
    for ax in axes:
        a[ax, ax], a[ax, 3] = -1.0, shape[ax] - 1
    return a


def _relabel(root: Path, name: str, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(root / "labelsTr" / f"{name}.nii.gz"))


def test_msd_image_and_label_map_are_reoriented_alike_and_a_misregistered_pair_is_refused(tmp_path, rng) -> None:
    """A label map stored in another voxel order (x reversed, its affine saying so) lands on its image's voxels;
    one whose affine places it elsewhere (voxels as the image's, affine flipped) is an error naming both files.
    Images stored LPS are reoriented to RAS+ (the slices are those of the flipped array)."""
    root = write_msd(tmp_path / "Task03_Liver", rng, n=4, tumour=False)
    for v in range(4):  # liver only in the left part: a flip shows
        img = nib.load(str(root / "imagesTr" / f"liver_{v}.nii.gz"))
        vol = np.full(img.shape, -1000.0, dtype=np.float32)
        lab = np.zeros(img.shape, dtype=np.uint8)
        lab[2:8, 4:16, 1:5] = 1
        vol[lab == 1] = 100
        vol[0, 0, 0] -= v  # four scans, not one copied (identical files are refused)
        # The image in LPS voxel order (x and y reversed), the label map with only x reversed; each affine puts
        # the voxels where the RAS+ arrays above have them (world = RAS voxel index).
        nib.save(nib.Nifti1Image(vol[::-1, ::-1].copy(), _reversed(0, 1)),
                 str(root / "imagesTr" / f"liver_{v}.nii.gz"))
        _relabel(root, f"liver_{v}", lab[::-1].copy(), _reversed(0))
    s = load_segmentation_splits(f"msd:{root}", image_size=20, seed=0)
    for part in (s.train, s.val, s.test):
        bright = part.images[:, 0] > 0.5
        assert torch.equal(bright, part.labels == 1)
    # Canonical order: x runs left to right, the liver at x 2..7 (RAS+), as written before the flips.
    assert bool((s.train.labels[:, 2:8, 4:16] == 1).any()) and not bool((s.train.labels[:, 12:, :] == 1).any())
    # Misregistered: the label map's voxels as the image's, but its affine reverses x about the origin (the grid
    # then lies at x -19..0, the image's at 0..19).
    lab = np.zeros((20, 20, 6), dtype=np.uint8)
    lab[2:8, 4:16, 1:5] = 1
    _relabel(root, "liver_1", lab, np.diag([-1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(DataError, match=r"volume 'liver_1': imagesTr/liver_1\.nii\.gz and labelsTr/liver_1\.nii\.gz "
                                        r"lie on different voxel grids .*Fix: resample the label map"):
        load_segmentation_splits(f"msd:{root}", image_size=20, seed=0)
    # A shift of a tenth of a voxel is a misregistration too; float32 header rounding is not.
    shifted = np.eye(4)
    shifted[0, 3] = 0.1
    _relabel(root, "liver_1", lab, shifted)
    with pytest.raises(DataError, match=r"up to 0\.1 voxels away"):
        load_segmentation_splits(f"msd:{root}", image_size=20, seed=0)
    shifted[0, 3] = 1e-4
    _relabel(root, "liver_1", lab, shifted)
    load_segmentation_splits(f"msd:{root}", image_size=20, seed=0)


def test_cli_names_a_misregistered_pair_on_stderr_and_exits_2(tmp_path, rng) -> None:
    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    root = write_msd(tmp_path / "Task03_Liver", rng, n=4)
    _relabel(root, "liver_2", np.asarray(nib.load(str(root / "labelsTr" / "liver_2.nii.gz")).dataobj),
             np.diag([-1.0, 1.0, 1.0, 1.0]))
    res = CliRunner().invoke(app, ["train", "--dataset", f"msd:{root}", "--epsilon", "8", "--epochs", "1",
                                   "--image-size", "16", "--threads", "1", "--json"])
    assert res.exit_code == 2 and not res.stdout and "Traceback" not in res.stderr
    assert "liver_2.nii.gz lie on different voxel grids" in res.stderr and "Fix:" in res.stderr


def test_nnunet_v2_dataset_json_and_channel_names_are_read(tmp_path, rng) -> None:
    """nnU-Net v2: labels as name -> index, channel_names in place of modality, images named CASE_0000.nii.gz."""
    root = write_msd(tmp_path / "Dataset003_Liver", rng, n=4)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "liver": 1, "tumor": 2},
                                                   "numTraining": 4}))
    for p in (root / "imagesTr").glob("*.nii.gz"):
        p.rename(p.with_name(p.name.replace(".nii.gz", "_0000.nii.gz")))
    s = load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)
    assert s.label_names == ("background", "liver", "tumor") and s.modality == "CT"
    assert sum(p.n_volumes for p in (s.train, s.val, s.test)) == 4
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                   "labels": {"background": 0, "whole": [1, 2]}}))
    with pytest.raises(DataError, match=r"labels must be one class index per name .*'whole' is a region.*got "
                                        r"'\{\"background\": 0, \"whole\": \[1, 2\]\}'"):
        load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": "x"}}))
    with pytest.raises(DataError, match=r"nnU-Net v2's \{\"background\": 0.*got '\{\"background\": \"x\"\}'"):
        load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 6), np.float32), np.eye(4)),
             str(root / "imagesTr" / "liver_1_0001.nii.gz"))
    with pytest.raises(DataError, match=r"imagesTr/liver_1_0001\.nii\.gz is channel 1 of case 'liver_1'"):
        load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)


def _gunzip(path: Path) -> Path:
    """Rewrite ``x.nii.gz`` as the uncompressed ``x.nii`` (same voxels, same header)."""
    import gzip

    out = path.with_name(path.name.removesuffix(".gz"))
    out.write_bytes(gzip.decompress(path.read_bytes()))
    path.unlink()
    return out


def test_uncompressed_nii_files_are_read_beside_nii_gz_and_none_is_dropped(tmp_path, rng) -> None:
    """The Decathlon layout with some (or all) volumes as .nii: every pair is read, paired by case name."""
    root = write_msd(tmp_path / "mixed", rng, n=6)
    for v in (1, 2):
        _gunzip(root / "imagesTr" / f"liver_{v}.nii.gz")
        _gunzip(root / "labelsTr" / f"liver_{v}.nii.gz")
    _gunzip(root / "labelsTr" / "liver_3.nii.gz")  # image .nii.gz, label map .nii: still one case
    s = load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)
    ids = set().union(*(set(p.volume_ids) for p in (s.train, s.val, s.test)))
    assert ids == {f"liver_{v}" for v in range(6)}
    # nnU-Net v2 with file_ending ".nii": an all-.nii task loads.
    root = write_msd(tmp_path / "Dataset001_nii", rng, n=4)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii",
                                                   "labels": {"background": 0, "liver": 1, "tumor": 2}}))
    for p in sorted((root / "imagesTr").glob("*.nii.gz")):
        _gunzip(p.rename(p.with_name(p.name.replace(".nii.gz", "_0000.nii.gz"))))
    for p in sorted((root / "labelsTr").glob("*.nii.gz")):
        _gunzip(p)
    s = load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)
    assert sum(p.n_volumes for p in (s.train, s.val, s.test)) == 4
    # A file of the other ending than file_ending is refused by name (nnU-Net would not read it), not dropped.
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 6), np.float32), np.eye(4)),
             str(root / "imagesTr" / "liver_9_0000.nii.gz"))
    with pytest.raises(DataError, match=r"imagesTr/liver_9_0000\.nii\.gz does not end in dataset\.json's "
                                        r"file_ending '\.nii'.*Fix: save it as liver_9_0000\.nii"):
        load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)
    (root / "imagesTr" / "liver_9_0000.nii.gz").unlink()
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".mha"}))
    with pytest.raises(DataError, match=r"dataset\.json file_ending must be '\.nii\.gz' or '\.nii'.*got '\.mha'"):
        load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)
    # One case as both .nii and .nii.gz is refused naming both files.
    root = write_msd(tmp_path / "twice", rng, n=4)
    (root / "imagesTr" / "liver_2.nii").write_bytes(
        __import__("gzip").decompress((root / "imagesTr" / "liver_2.nii.gz").read_bytes()))
    with pytest.raises(DataError, match=r"imagesTr/liver_2\.nii and imagesTr/liver_2\.nii\.gz are one case in two "
                                        r"files"):
        load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)


def test_an_unpaired_nii_file_is_named_not_dropped(tmp_path, rng) -> None:
    root = write_msd(tmp_path / "t", rng, n=4)
    _gunzip(root / "imagesTr" / "liver_3.nii.gz")
    (root / "labelsTr" / "liver_3.nii.gz").unlink()
    with pytest.raises(DataError, match=r"1 file\(s\) without their pair \(imagesTr/liver_3\.nii has no label map"):
        load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)


@pytest.mark.parametrize("labels", [{"background": 0, "liver": 1, "tumor": 2, "ignore": 3},
                                    {"0": "background", "1": "liver", "2": "Ignore"}])
def test_nnunet_ignore_label_is_refused_not_trained_as_a_class(tmp_path, rng, labels) -> None:
    """nnU-Net v2's "ignore" marks unannotated pixels (out of the loss and the Dice score); dpaudit would train and
    score it as a class, so the task is refused with the label's index and a fix."""
    root = write_msd(tmp_path / "t", rng, n=4, labels=labels)
    index = 3 if "ignore" in labels else 2
    with pytest.raises(DataError, match=rf"dataset\.json labels must be class names only: nnU-Net v2's 'ignore' "
                                        rf"label .*got \"'ignore': {index}\"\. Fix: give the pixels labelled {index} in "
                                        r"labelsTr/ a class"):
        load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)


def test_dataset_json_keys_naming_one_index_twice_are_refused_not_overwritten() -> None:
    """Decathlon keys "1" and "01" are one class index: two names for it would silently keep the last one."""
    from dpaudit.volumes import _labels_map

    assert _labels_map({"0": "background", "01": "liver"}) == {0: "background", 1: "liver"}
    assert _labels_map({"0": "background", "1": "liver", "01": "liver"}) == {0: "background", 1: "liver"}
    with pytest.raises(DataError, match=r"give index 1 one name \(keys '1', '01' are the same index\)"):
        _labels_map({"0": "background", "1": "liver", "01": "tumour"})


def test_a_float_label_map_is_refused_with_the_values_and_a_fix_that_fits(tmp_path, rng) -> None:
    root = write_msd(tmp_path / "Task03_Liver", rng, n=4)
    lab = np.asarray(nib.load(str(root / "labelsTr" / "liver_2.nii.gz")).dataobj).astype(np.float32)
    lab[lab == 1] = 0.9999  # resampled with linear interpolation
    _relabel(root, "liver_2", lab, np.eye(4))
    with pytest.raises(DataError, match=r"volume 'liver_2' \('[^']*labelsTr/liver_2\.nii\.gz'\): its label map must hold integers \(class indices\), got "
                                        r"0\.9999.*Fix: resample the label map with nearest-neighbour"):
        load_segmentation_splits(f"msd:{root}", image_size=16, seed=0)
    lab[lab == np.float32(0.9999)] = 1.0  # whole numbers stored as floats are class indices
    _relabel(root, "liver_2", lab, np.eye(4))
    assert load_segmentation_splits(f"msd:{root}", image_size=16, seed=0).label_names[1] == "liver"


def test_demo_ct_is_seeded_and_has_volumes_without_tumour() -> None:
    a = load_segmentation_splits("demo-ct", image_size=16, max_volumes=8, seed=3)
    b = load_segmentation_splits("demo-ct", image_size=16, max_volumes=8, seed=3)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert is_segmentation_dataset("demo-ct") and is_segmentation_dataset("msd:/x") and not is_segmentation_dataset("demo")
    from dpaudit.volumes import make_demo_ct

    vols = make_demo_ct(8, seed=0, size=24, slices=6)
    assert any(int(lab.max()) == 1 for _, _, lab in vols) and any(int(lab.max()) == 2 for _, _, lab in vols)


def test_dice_and_iou_match_monai_with_its_empty_class_convention(rng) -> None:
    monai = pytest.importorskip("monai.metrics")
    k = 3
    pairs = []
    for v in range(4):
        t = rng.integers(0, k, size=(6, 8, 8))
        if v == 0:
            t[t == 2] = 1  # no tumour in this volume: left out of the tumour mean
        p = np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, k, size=t.shape))
        pairs.append((p, t))
    ours = segmentation_metrics(pairs, ("background", "liver", "tumour"))

    def onehot(a):
        return torch.nn.functional.one_hot(torch.from_numpy(a), k).permute(3, 0, 1, 2)[None].float()

    dm = monai.DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    im = monai.MeanIoU(include_background=False, reduction="none", ignore_empty=True)
    for p, t in pairs:
        dm(onehot(p), onehot(t))
        im(onehot(p), onehot(t))
    d = dm.aggregate().numpy()
    i = im.aggregate().numpy()
    assert np.isnan(d[0, 1])
    np.testing.assert_allclose([ours.dice["liver"], ours.dice["tumour"]], np.nanmean(d, axis=0), rtol=1e-6)
    np.testing.assert_allclose([ours.iou["liver"], ours.iou["tumour"]], np.nanmean(i, axis=0), rtol=1e-6)
    assert ours.volumes_with_class == {"liver": 4, "tumour": 3}
    dice, iou = dice_iou_per_volume(pairs[1][1], pairs[1][1], k)
    assert np.allclose(dice, 1) and np.allclose(iou, 1)


@pytest.mark.parametrize("sampler", ["opacus", "training"])
def test_unet_per_sample_gradients_under_opacus_match_autograd(rng, sampler) -> None:
    pytest.importorskip("monai")
    from opacus.grad_sample import GradSampleModule

    if sampler == "training":  # what DP training uses (Opacus' hooks, dpaudit's grouped Conv2d kernel)
        from dpaudit.audit.grad_sample import FastConvGradSampleModule as GradSampleModule

    from dpaudit.audit.train import check_dp_compatible
    from dpaudit.models import build_model

    torch.manual_seed(0)
    model = build_model("unet", num_classes=3, in_channels=1, width=4)
    check_dp_compatible(model)
    ref = build_model("unet", num_classes=3, in_channels=1, width=4)
    ref.load_state_dict(model.state_dict())
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    x = torch.from_numpy(rng.normal(size=(3, 1, 16, 16)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, size=(3, 16, 16)))
    torch.nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    params = [p for p in ref.parameters() if p.requires_grad]
    g1 = torch.autograd.grad(torch.nn.functional.cross_entropy(ref(x[1:2]), y[1:2], reduction="sum"), params)
    scale = max(float(g.abs().max()) for g in g1)
    for p, g in zip((p for p in model.parameters() if p.requires_grad), g1, strict=True):
        # float32 sums in a different order; a conv bias right before GroupNorm has a true gradient of 0
        torch.testing.assert_close(p.grad_sample[1], g, rtol=1e-4, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    pytest.importorskip("monai")
    from dpaudit.audit.train import TrainConfig, train

    out = tmp_path_factory.mktemp("seg")
    cfg = TrainConfig(dataset="demo-ct", image_size=16, max_images=6, epochs=1, batch_size=8, epsilon=8.0,
                      arch_args={"width": 4}, threads=1, out=str(out))
    return train(cfg)


def test_dp_training_reports_dice_per_class_and_the_volume_unit(seg_run) -> None:
    r = seg_run
    assert r.task == "segmentation" and r.arch == "unet"
    j = json.loads(r.to_json())
    assert set(j["metrics"]["dice"]) == set(j["metrics"]["iou"]) == {"liver", "tumour"}
    assert 0 <= j["metrics"]["dice"]["liver"] <= 1
    assert r.n_train_volumes == 4 and j["privacy"]["records_per_patient"] == 16
    assert r.epsilon_achieved <= 8.0
    from dpaudit.checkpoint import load_checkpoint

    ck = load_checkpoint(r.checkpoint)
    assert ck.extra["task"] == "segmentation" and ck.extra["records_per_patient"] == 16


def test_imprint_attack_reconstructs_ct_slices_through_the_unet(seg_run) -> None:
    from dpaudit.attacks.scenario import AttackScenario, attack_checkpoint
    from dpaudit.checkpoint import load_checkpoint

    ck = load_checkpoint(seg_run.checkpoint)
    splits = load_segmentation_splits("demo-ct", image_size=16, max_volumes=6, seed=0)
    res = attack_checkpoint(ck, splits, AttackScenario(n_images=4, noise_multipliers=(0.0,), seed=0))
    row = res.rows[0]
    assert row.success_rate == 1.0  # sigma 0: every slice comes back (SSIM > 0.8)
    assert 0 < float(np.mean(res.rho)) < 1


def test_task_options_are_checked() -> None:
    from dpaudit.audit.train import TrainConfig
    from dpaudit.errors import ConfigError

    with pytest.raises(ConfigError, match="task"):
        TrainConfig(dataset="demo", task="segmentation", non_private=True)
    with pytest.raises(ConfigError, match="arch"):
        TrainConfig(dataset="demo-ct", arch="smallcnn", non_private=True)
    with pytest.raises(ConfigError, match="background_share"):
        TrainConfig(dataset="demo", background_share=0.5, non_private=True)
    assert TrainConfig(dataset="demo", non_private=True).task == "classification"


@pytest.fixture(scope="module")
def seg_profile(tmp_path_factory):
    pytest.importorskip("monai")
    from dpaudit.audit.profile import run_profile
    from dpaudit.audit.profile.schema import ProfileConfig

    out = tmp_path_factory.mktemp("segprof")
    config = ProfileConfig(dataset="demo-ct", image_size=16, max_images=6, epsilons=(8.0,), epochs=1,
                           batch_size=8, attack_images=2, decoders=("strong",), observations=1)
    return run_profile(config, out, threads=1), out


def test_profile_of_demo_ct_bounds_per_volume_and_reports_dice(seg_profile) -> None:
    prof, out = seg_profile
    c = prof.config
    assert c.task == "segmentation" and c.arch == "unet" and c.seeds == 1 and prof.privacy().unit == "patient"
    # The options left out took the segmentation defaults, and the profile records which; those given did not.
    assert set(c.task_defaults) == {"arch", "seeds", "lr", "class_weights"}
    assert c.class_weights == (0.1, 0.4, 0.5) and c.epochs == 1
    assert prof.dataset.privacy.data_unit == "volume" and "volume" in prof.privacy().describe()
    b = prof.bounds[0]
    assert b.kappa_train == pytest.approx(1 / 4)  # 4 training volumes, not 64 training slices
    assert b.records_per_patient == 16
    lv = prof.levels()
    assert {"dice_liver", "dice_tumour", "iou_liver"} <= set(lv[0].utility) and lv[-1].utility["dice_liver"].n == 1
    from dpaudit.audit.report import render_report
    from dpaudit.audit.report_text import utility_columns

    assert utility_columns(prof) == [("dice_liver", "Dice liver"), ("dice_tumour", "Dice tumour")]
    render_report(prof, out / "report.pdf", base_dir=out)
    from pypdf import PdfReader

    text = " ".join(" ".join(p.extract_text() for p in PdfReader(str(out / "report.pdf")).pages).split())
    assert "Test Dice liver" in text and "Test Dice tumour" in text and "κ = 1/4" in text
    # demo-ct is synthetic: the seed paper has no row for it, so no paper-mode appendix (an MSD Liver folder has one)
    assert "Paper mode" not in text and "17.96%" not in text
    assert "task_defaults" in text  # the configuration table lists the options that took the task's default
    # The records are 2-D slices and the unit is the patient (a volume): the wording names them, never "image".
    from dpaudit.audit.report_text import glossary

    words = dict(glossary(prof))
    assert words["ReRo"].endswith("reconstructs the slices of a training patient (up to 16, moving together).")
    assert "all slices of one patient (up to 16)" in words["privacy unit"]
    assert not any("image" in v for k, v in words.items() if k in ("ReRo", "privacy unit", "C (clip norm)", "q (sampling probability)"))
    assert "per image" not in json.dumps(prof.labels) and "per slice" in json.dumps(prof.labels)
    assert "reconstructs a training patient's slices" in text and "per image" not in text
    for said in ("observing each image", "An image counts as reconstructed", "training images (", "too few images",
                 "Privacy unit volume"):
        assert said not in text, said
    assert "A slice counts as reconstructed" in text and "patient, one volume each" in text
    d = prof.dataset
    assert f"{d.n_train} training, {d.n_val} validation, {d.n_test} test slices" in text  # the data page
    assert "test images" not in text and "attacked images" not in text
    # the evidence page's 95% interval: each end rounded outward, the digits of the decision line
    from dpaudit.numfmt import percent_interval

    rows = [r for level in lv if level.attack is not None for r in level.attack.rows]
    assert rows and all(" – ".join(percent_interval(r.ci_low, r.ci_high)) in text for r in rows)


def _two_budgets(prof):
    """A second, more private budget with half the Dice: the real epsilon-8 runs relabelled epsilon 1 (a test
    edit); every private budget's attack 0 of n with an interval up to 50%, within a realistic limit of 90%."""

    def lower(t):
        m = t.metrics
        worse = dataclasses.replace(m, dice={k: v / 2 for k, v in m.dice.items()})
        return dataclasses.replace(t, epsilon_target=1.0, metrics=worse)

    def quiet(a):
        rows = tuple(dataclasses.replace(r, success_rate=0.0, ci_low=0.0, ci_high=0.5) for r in a.rows)
        return dataclasses.replace(a, rows=rows)

    priv = [t for t in prof.train if t.epsilon_target == 8.0]
    return dataclasses.replace(
        prof, config=dataclasses.replace(prof.config, epsilons=(1.0, 8.0)),
        train=(*map(lower, priv), *prof.train),
        bounds=(*(dataclasses.replace(b, epsilon_target=1.0) for b in prof.bounds if b.epsilon_target == 8.0),
                *prof.bounds),
        attacks=tuple(quiet(a) if a.epsilon_target is not None else a for a in
                      (*(dataclasses.replace(a, epsilon_target=1.0) for a in prof.attacks if a.epsilon_target == 8.0),
                       *prof.attacks)))


def test_segmentation_decision_ranks_budgets_by_dice_on_every_page(seg_profile, tmp_path) -> None:
    """The board's decision on a demo-ct profile ranks by the headline Dice (liver) and says so: in the reason, on
    the first page and in the utility cost; never "no utility was measured" (MCC is undefined for segmentation)."""
    from pypdf import PdfReader

    from dpaudit.audit.decision import Limit, with_decision
    from dpaudit.audit.report import render_report
    from dpaudit.audit.segmentation import SegmentationMetrics

    prof, out = seg_profile
    priv = [t for t in prof.train if t.epsilon_target == 8.0]
    assert priv and isinstance(priv[0].metrics, SegmentationMetrics) and priv[0].metrics.dice["liver"] > 0
    decided = with_decision(_two_budgets(prof), [Limit("rero", 0.9, "realistic")])
    d = decided.decision
    assert d.within == ("ε = 1", "ε = 8") and d.recommended == "ε = 8" and d.utility_metric == "dice_liver"
    assert "mean test Dice liver" in d.reason and "No " not in d.reason
    assert d.checks_of("ε = 8").dice == pytest.approx(priv[0].metrics.dice["liver"]) and d.checks_of("ε = 8").mcc is None
    render_report(decided, tmp_path / "r.pdf", base_dir=out)
    first = " ".join(PdfReader(str(tmp_path / "r.pdf")).pages[0].extract_text().split())
    assert "the best mean test Dice liver of the 2 budgets" in first, first
    assert "Utility cost of ε = 8: mean test Dice liver" in first and "MCC" not in first


def test_report_remakes_a_stored_decision_ranked_by_mcc_and_says_so_once(seg_profile, tmp_path) -> None:
    """A demo-ct profile.json written when decisions ranked by MCC (its decision block edited back to that form:
    no utility_metric, no dice per budget, the most private budget recommended as unmeasured) is re-decided by
    `dpaudit report` with the stored limits by Dice liver: a note on the console, one sentence on the first page,
    profile.json left as it is; a current one renders as before, with no note."""
    from pypdf import PdfReader
    from typer.testing import CliRunner

    from dpaudit.audit.decision import Limit, with_decision
    from dpaudit.audit.report import render_report
    from dpaudit.cli.main import app

    prof, _ = seg_profile
    current = with_decision(_two_budgets(prof), [Limit("rero", 0.9, "realistic")])
    assert current.decision.recommended == "ε = 8"
    data = json.loads(current.to_json())
    block = data["decision"]
    del block["utility_metric"]
    for b in block["budgets"]:
        del b["dice"], b["n_seeds"]
    block["recommended"] = "ε = 1"
    block["reason"] = "2 of 2 privacy budgets meet every limit: ε = 1, ε = 8. No utility was measured, so ..."
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    for folder, text in ((old_dir, json.dumps(data, indent=2, ensure_ascii=False)), (new_dir, current.to_json())):
        folder.mkdir()
        (folder / "profile.json").write_text(text, encoding="utf-8")
    stored = (old_dir / "profile.json").read_bytes()

    def first_page(pdf):
        return " ".join(PdfReader(str(pdf)).pages[0].extract_text().split())

    runner = CliRunner()
    res = runner.invoke(app, ["report", str(old_dir)])
    assert res.exit_code == 0, res.output
    note = ("Decision re-made with the stored limits by Dice liver; the stored one ranked by MCC, which this "
            "profile does not measure, and recommended ε = 1 (profile.json is left as it is).")
    assert res.stderr.count("re-made") == 1 and note in " ".join(res.stderr.split())
    assert "recommended: ε = 8" in res.stdout and "not ranked: at ε = 8 the mean test Dice tumour is" in res.stdout
    old_page = first_page(old_dir / "report.pdf")
    assert "Recommended: ε = 8" in old_page and "the best mean test Dice liver of the 2 budgets" in old_page
    assert note in old_page and old_page.count("re-made") == 1
    assert "was measured to rank them" not in old_page and "MCC was measured" not in old_page
    assert (old_dir / "profile.json").read_bytes() == stored
    # --json carries the re-made decision and the note.
    res = runner.invoke(app, ["report", str(old_dir), "-o", str(tmp_path / "j.pdf"), "--json"])
    got = json.loads(res.stdout)
    assert got["decision"]["recommended"] == "ε = 8" and got["decision"]["utility_metric"] == "dice_liver"
    assert got["notes"] == [f"profile.json: {note}"]
    # The same limits given again change nothing: the re-made decision, its sentence, report.pdf.
    res = runner.invoke(app, ["report", str(old_dir), "--max-rero", "0.9", "--threat-model", "realistic",
                              "-o", str(tmp_path / "same.pdf")])
    assert res.exit_code == 0 and "differs" not in res.stderr and note in " ".join(res.stderr.split())
    assert (tmp_path / "same.pdf").read_bytes() == (old_dir / "report.pdf").read_bytes()
    # render_report reads the old file the same way.
    render_report(old_dir / "profile.json", tmp_path / "api.pdf")
    assert (tmp_path / "api.pdf").read_bytes() == (old_dir / "report.pdf").read_bytes()
    # A current segmentation profile.json: no note, no sentence, the bytes render_report gives its Profile.
    res = runner.invoke(app, ["report", str(new_dir)])
    assert res.exit_code == 0 and "re-made" not in res.output and res.stderr.count("note:") == 0
    assert "re-made" not in first_page(new_dir / "report.pdf")
    render_report(current, tmp_path / "current.pdf", base_dir=new_dir)
    assert (tmp_path / "current.pdf").read_bytes() == (new_dir / "report.pdf").read_bytes()
    # The first page's text is the old file's, less the one sentence.
    assert old_page.replace(note + " ", "") == first_page(new_dir / "report.pdf")


def test_profile_of_an_msd_liver_folder_has_the_paper_mode_appendix(tmp_path, rng) -> None:
    pytest.importorskip("monai")
    from pypdf import PdfReader

    from dpaudit.audit.profile import run_profile
    from dpaudit.audit.profile.schema import ProfileConfig
    from dpaudit.audit.report import render_report

    root = write_msd(tmp_path / "Task03_Liver", rng, n=6)
    config = ProfileConfig(dataset=f"msd:{root}", image_size=16, epsilons=(8.0,), epochs=1, batch_size=4,
                           attack_images=2, decoders=("strong",), arch_args='{"width": 4}')
    prof = run_profile(config, tmp_path / "prof", threads=1)
    render_report(prof, tmp_path / "report.pdf", base_dir=tmp_path / "prof")
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(str(tmp_path / "report.pdf")).pages).split())
    assert "Paper mode: MSD Liver" in text and "17.96%" in text  # the seed paper's printed value beside ours
    assert "What this is." in text and "background, liver, cancer" in text


def test_paper_mode_applies_to_msd_liver_folders_only() -> None:
    from dpaudit.audit.paper_mode import is_msd_liver

    assert is_msd_liver("msd:/data/Task03_Liver", ("background", "liver", "cancer"))
    assert is_msd_liver("msd:/copy/renamed", ("background", "Liver", "tumour"))  # the labels decide, not the name
    assert not is_msd_liver("demo-ct", ("background", "liver", "tumour"))  # synthetic: no row in the paper
    assert not is_msd_liver("msd:/data/Task07_Pancreas", ("background", "pancreas", "cancer"))
    assert not is_msd_liver("msd:/data/Task09_Spleen", ("background", "spleen"))


def test_the_closing_console_table_fits_80_columns_with_two_dice_columns(seg_profile, monkeypatch) -> None:
    import io

    from rich.console import Console

    from dpaudit.cli import profile_cmd

    console = Console(width=80, record=True, file=io.StringIO())
    monkeypatch.setattr(profile_cmd, "out", console)
    profile_cmd._print_summary(seg_profile[0])
    table = console.export_text().split("bound: sound upper bound")[0]
    assert "Dice" in table and "tumour" in table and "realistic" in table
    assert "…" not in table  # nothing cut
    assert "image" not in table and "slice" in table  # the records are slices: "realistic per slice"


def test_a_segmentation_profile_names_dice_not_mcc_in_the_report_and_the_console(seg_profile, tmp_path,
                                                                                monkeypatch) -> None:
    """Runs scored with Dice never read 'MCC': the report's Welch note names the headline Dice, its glossary
    explains Dice and IoU (not MCC), and the console's per-initialisation table (the runs repeated from a second
    initialisation, a test edit) shows Dice liver where it read 'Test MCC' over 'n/a' in every cell."""
    import io

    from pypdf import PdfReader
    from rich.console import Console

    from dpaudit.audit.report import render_report
    from dpaudit.audit.report_text import glossary
    from dpaudit.cli import profile_cmd

    prof, out = seg_profile
    render_report(prof, tmp_path / "r.pdf", base_dir=out)
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(str(tmp_path / "r.pdf")).pages).split())
    assert "MCC" not in text
    assert "the difference of mean Dice liver with Welch's t-test p-value" in text
    assert "The demo-ct dataset is synthetic and built into dpaudit" in text  # (it was said of demo alone)
    words = dict(glossary(prof))
    assert "MCC" not in words and words["Dice"].startswith("overlap of the predicted and the true region")

    (tmp_path / "pre.pt").write_bytes(b"")  # the config checks that the file exists; nothing loads it here
    both = dataclasses.replace(prof, config=dataclasses.replace(prof.config, inits=("scratch", str(tmp_path / "pre.pt"))),
                               train=(*prof.train, *(dataclasses.replace(t, init="pre.pt") for t in prof.train)))
    console = Console(width=120, record=True, file=io.StringIO())
    monkeypatch.setattr(profile_cmd, "out", console)
    profile_cmd._print_summary(both)
    shown = console.export_text()
    by_init = shown.split("per initialisation", 1)[1]
    liver = prof.levels()[-1].utility["dice_liver"].mean
    assert "Test Dice liver (empirical) per initialisation" in shown and "MCC" not in shown
    assert f"{liver:.3f} (n = 1, no interval)" in by_init and "n/a" not in by_init


def test_paper_mode_reproduces_the_msd_liver_rows_of_table_3() -> None:
    from dpaudit.audit.paper_mode import msd_liver_rows

    for r in msd_liver_rows():
        # Table 3 prints two decimals in percent; sigma is calibrated by bisection (bounds.md: Paper mode).
        assert r.worst_case == pytest.approx(r.paper_worst_case, abs=6e-4)
        assert r.relaxed == pytest.approx(r.paper_relaxed, abs=1.5e-4)


def test_cli_train_json_on_an_msd_folder_and_attack_on_its_checkpoint(tmp_path, rng) -> None:
    pytest.importorskip("monai")
    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    root = write_msd(tmp_path / "Task03_Liver", rng, n=6)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--dataset", f"msd:{root}", "--epsilon", "8", "--epochs", "1", "--image-size",
                              "16", "--batch-size", "4", "--threads", "1", "--out", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    j = json.loads(res.stdout)
    assert j["task"] == "segmentation" and {"liver", "cancer"} <= set(j["metrics"]["dice"])
    assert 0 <= j["metrics"]["dice"]["liver"] <= 1 and j["epsilon_achieved"] <= 8
    # The options left out took the segmentation defaults: recorded by name, said on stderr.
    assert j["class_weights"] == [0.1, 0.4, 0.5] and j["arch"] == "unet" and j["lr"] == 0.01
    assert j["task_defaults"] == ["arch", "lr", "class_weights"]
    assert "segmentation defaults: arch unet, lr 0.01, class_weights 0.1,0.4,0.5" in res.stderr
    res = runner.invoke(app, ["attack", "--model", str(tmp_path / "run" / "model.pt"), "--dataset", f"msd:{root}",
                              "--sigmas", "0,1e-3", "--n-images", "2", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert max(r["success_rate"] for r in rows if r["noise_multiplier"] == 0) == 1.0
    res = runner.invoke(app, ["train", "--dataset", f"msd:{root}", "--task", "classification", "--non-private"])
    assert res.exit_code == 2 and "task must be segmentation" in res.output


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory) -> str:
    from dpaudit.audit.configs import TrainConfig
    from dpaudit.audit.train import train

    out = tmp_path_factory.mktemp("cls")
    train(TrainConfig(dataset="demo", arch="smallcnn", image_size=16, max_images=60, epochs=1, batch_size=16,
                      non_private=True, threads=1, out=str(out)))
    return str(out / "model.pt")


def test_a_checkpoint_of_the_other_task_is_a_task_mismatch(seg_run, classifier_checkpoint) -> None:
    """A U-Net attacked on classification images, a classifier on CT volumes, and an --init of the other task:
    one line naming both tasks, not a channel or shape mismatch."""
    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["attack", "--model", seg_run.checkpoint, "--dataset", "demo", "--sigmas", "0",
                              "--n-images", "2", "--threads", "1"])
    assert res.exit_code == 2, res.output
    assert "task mismatch" in res.output and "is a segmentation model" in res.output
    assert "is a classification dataset" in res.output and "--dataset demo-ct or msd:PATH" in res.output
    assert "channels" not in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["attack", "--model", classifier_checkpoint, "--dataset", "demo-ct", "--max-images",
                              "6", "--sigmas", "0", "--n-images", "2", "--threads", "1"])
    assert res.exit_code == 2, res.output
    assert "task mismatch" in res.output and "is a classification model" in res.output
    assert "is a segmentation dataset" in res.output
    res = runner.invoke(app, ["train", "--dataset", "demo-ct", "--init", classifier_checkpoint, "--image-size", "16",
                              "--max-images", "6", "--epochs", "1", "--non-private", "--threads", "1"])
    assert res.exit_code == 2 and "task mismatch" in res.output, res.output


def test_weighted_loss_is_each_samples_own_weighted_mean(rng) -> None:
    """The class-weighted loss is the mean over samples of PyTorch's weighted cross-entropy of each sample alone
    (the seed paper's loss at batch size 1), and unweighted it is the plain mean cross-entropy."""
    from dpaudit.audit.train import SampleMeanCrossEntropy

    logits = torch.from_numpy(rng.normal(size=(4, 3, 6, 6)).astype(np.float32))
    target = torch.from_numpy(rng.integers(0, 3, size=(4, 6, 6)))
    w = (0.1, 0.4, 0.5)
    ref = torch.nn.CrossEntropyLoss(weight=torch.tensor(w))
    expected = torch.stack([ref(logits[i:i + 1], target[i:i + 1]) for i in range(4)]).mean()
    torch.testing.assert_close(SampleMeanCrossEntropy(w)(logits, target), expected)
    assert torch.equal(SampleMeanCrossEntropy()(logits, target),
                       torch.nn.functional.cross_entropy(logits, target))
    # PyTorch's weighted "mean" over the batch is another number: it divides by the batch's summed weights.
    assert not torch.allclose(ref(logits, target), expected)


@pytest.mark.parametrize("weights", [(), (0.1, 0.4, 0.5)])
def test_a_samples_per_sample_gradient_does_not_depend_on_the_rest_of_its_batch(rng, weights) -> None:
    """DP-SGD's sensitivity argument: sample 0's clipped gradient must not change when the other samples (and
    their labels) change. A batch-wide weighted mean would break this; the per-sample weighted mean keeps it."""
    pytest.importorskip("monai")
    from dpaudit.audit.grad_sample import FastConvGradSampleModule
    from dpaudit.audit.train import SampleMeanCrossEntropy
    from dpaudit.models import build_model

    torch.manual_seed(0)
    model = build_model("unet", num_classes=3, in_channels=1, width=4)
    gsm = FastConvGradSampleModule(model, batch_first=True, loss_reduction="mean")
    loss = SampleMeanCrossEntropy(weights)
    x = torch.from_numpy(rng.normal(size=(4, 1, 16, 16)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, size=(4, 16, 16)))
    grads = []
    for others in (slice(1, 4), slice(1, 2)):  # the same sample 0 with three, then one, other samples
        xb = torch.cat([x[:1], x[others]])
        yb = torch.cat([y[:1], torch.from_numpy(rng.integers(0, 3, size=(len(xb) - 1, 16, 16)))])
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.grad_sample = None
        loss(gsm(xb), yb).backward()
        grads.append([p.grad_sample[0].clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_class_weights_are_checked_against_the_task_and_the_classes(tmp_path, rng) -> None:
    from dpaudit.audit.configs import TrainConfig
    from dpaudit.audit.train import train
    from dpaudit.errors import ConfigError

    assert TrainConfig(dataset="demo-ct", non_private=True, class_weights="none").class_weights == ()
    assert TrainConfig(dataset="demo-ct", non_private=True, class_weights="1,2,3").class_weights == (1.0, 2.0, 3.0)
    with pytest.raises(ConfigError, match=r"class_weights must be none for classification"):
        TrainConfig(dataset="demo", non_private=True, class_weights=(0.5, 0.5))
    with pytest.raises(ConfigError, match=r"class_weights must be positive"):
        TrainConfig(dataset="demo-ct", non_private=True, class_weights="0.1,-1,0.5")
    root = write_msd(tmp_path / "Task09_Spleen", rng, n=4, labels={"0": "background", "1": "spleen"}, tumour=False)
    # Given on the command line, weights of the wrong length are refused (never cut or padded).
    with pytest.raises(ConfigError, match=r"class_weights must be one weight per class: 2 for background, spleen.*"
                                          r"--class-weights with 2 values"):
        train(TrainConfig(dataset=f"msd:{root}", image_size=16, epochs=1, batch_size=4, non_private=True,
                          threads=1, class_weights="0.1,0.4,0.5"))


@pytest.mark.parametrize("labels", [{"0": "background", "1": "spleen"},
                                    {"background": 0, "liver": 1, "tumor": 2, "vessel": 3},
                                    {"0": "background", "1": "pancreas", "2": "cancer"}])
def test_the_paper_class_weights_are_the_default_on_the_liver_task_only(tmp_path, rng, labels) -> None:
    """The default 0.1, 0.4, 0.5 is MSD Liver's (background, liver, tumour): another task (2 classes, 4, or 3 of
    another organ) trains unweighted by default, with a note naming its classes and the option; the same for the
    profile's runs and a federated client's (every place the default applies)."""
    from dpaudit.audit.configs import TrainConfig
    from dpaudit.audit.profile import ProfileConfig, plan_training
    from dpaudit.audit.train import train
    from dpaudit.config import PAPER_MSD_LIVER_CLASS_WEIGHTS, class_weights_for
    from dpaudit.errors import ConfigError
    from dpaudit.volumes import load_segmentation_splits

    root = write_msd(tmp_path / "task", rng, n=4, labels=labels, tumour=len(labels) > 2)
    names = load_segmentation_splits(f"msd:{root}", image_size=16).label_names
    config = TrainConfig(dataset=f"msd:{root}", image_size=16, epochs=1, batch_size=4, non_private=True, threads=1,
                         arch_args={"width": 4})
    assert config.class_weights == PAPER_MSD_LIVER_CLASS_WEIGHTS and "class_weights" in config.task_defaults
    weights, note = class_weights_for(config, names)
    assert weights == () and note is not None
    assert note.startswith("class_weights none (unweighted loss): the default 0.1,0.4,0.5 is the seed paper's for "
                           "MSD Liver's background, liver and tumour")
    assert f"this task's {len(names)} classes are {', '.join(names)}" in note
    assert f"pass --class-weights with {len(names)} values" in note
    result = train(config)
    assert result.class_weights == () and note in result.notes
    # The liver task (demo-ct's classes and MSD's) keeps the paper's weights, without a note.
    for liver in (("background", "liver", "tumour"), ("background", "Liver", "cancer")):
        assert class_weights_for(config, liver) == (PAPER_MSD_LIVER_CLASS_WEIGHTS, None)
    # Given weights stay as given, whatever the task, when there is one per class; else they are refused.
    given = TrainConfig(dataset=f"msd:{root}", non_private=True, class_weights=",".join(["0.5"] * len(names)))
    assert class_weights_for(given, names) == ((0.5,) * len(names), None)
    paper = TrainConfig(dataset=f"msd:{root}", non_private=True, class_weights="0.1,0.4,0.5")
    if len(names) != 3:
        with pytest.raises(ConfigError, match=rf"one weight per class: {len(names)} .*\(3 given\)"):
            class_weights_for(paper, names)
    else:
        assert class_weights_for(paper, names) == (PAPER_MSD_LIVER_CLASS_WEIGHTS, None)
    # The profile plans its runs with the weights they train with.
    prof = ProfileConfig(dataset=f"msd:{root}", image_size=16, epsilons=(8.0,), epochs=1, batch_size=4)
    assert {t.class_weights for t in plan_training(prof, tmp_path / "p", label_names=names)} == {()}
    liver_prof = ProfileConfig(dataset="demo-ct", image_size=16, epsilons=(8.0,), epochs=1, batch_size=4)
    assert {t.class_weights for t in plan_training(liver_prof, tmp_path / "q", label_names=("background", "liver",
                                                                                            "tumour"))} == {
        PAPER_MSD_LIVER_CLASS_WEIGHTS}


def test_train_prints_the_privacy_unit_once_in_slices_and_volumes(tmp_path, rng) -> None:
    pytest.importorskip("monai")
    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    root = write_msd(tmp_path / "Task03_Liver", rng, n=6)
    res = CliRunner().invoke(app, ["train", "--dataset", f"msd:{root}", "--epsilon", "8", "--epochs", "1",
                                   "--image-size", "16", "--batch-size", "4", "--threads", "1",
                                   "--class-weights", "none"])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("privacy unit") == 1, res.stdout
    assert "k = 6 slices per volume" in res.stdout and "4 volumes" in res.stdout
    assert "loss: per-pixel cross-entropy, unweighted" in res.stdout
    assert "class_weights" not in res.stderr  # given: not a default


def test_cli_attack_on_demo_ct_reconstructs_at_sigma_zero(seg_run) -> None:
    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    res = CliRunner().invoke(app, ["attack", "--model", seg_run.checkpoint, "--dataset", "demo-ct", "--max-images",
                                   "6", "--sigmas", "0,1e-3", "--n-images", "2", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert max(r["success_rate"] for r in rows if r["noise_multiplier"] == 0) == 1.0
    assert "k = 16 slices per volume at most in the model's training split, recorded in the checkpoint" in res.stderr
    assert "the attack itself reconstructs single slices" in " ".join(res.stderr.split())


def test_bounds_of_a_demo_ct_checkpoint_name_slices(seg_run) -> None:
    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    res = CliRunner().invoke(app, ["bounds", "--model", seg_run.checkpoint, "--method", "clt"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "epsilon per patient of 16 slices" in text and "epsilon per slice at delta" in text
    assert "the per-slice one" in text and "contributes 16 slices" in text
    assert "image" not in text.replace("--privacy-unit image", ""), text


def test_a_classification_only_command_names_a_segmentation_dataset_as_such() -> None:
    from dpaudit.data import load_splits

    with pytest.raises(DataError, match=r"demo-ct is a segmentation dataset, which dpaudit train, attack and "
                                        r"profile take.*Fix: pass --dataset demo"):
        load_splits("demo-ct", image_size=16)


def test_demo_ct_default_splits_hold_lesions_in_every_split() -> None:
    """24 volumes: 16 training, 4 validation, 4 test volumes; lesions large enough to survive the default 28 px."""
    from dpaudit.config import default_image_size

    s = load_segmentation_splits("demo-ct", image_size=default_image_size("demo-ct"), seed=0)
    assert (s.train.n_volumes, s.val.n_volumes, s.test.n_volumes) == (16, 4, 4)
    for part in (s.train, s.val, s.test):
        assert part.class_counts()[2] > 0
    # every test volume that holds a lesion holds it in more than a handful of pixels after resizing
    tumour = [int((s.test.labels[ix] == 2).sum()) for ix in s.test.volumes()]
    assert min(t for t in tumour if t > 0) >= 40


@pytest.mark.parametrize("command", [["train", "--epsilon", "8"], ["profile", "--epsilons", "8"]])
def test_class_weights_of_another_length_are_refused_at_load_naming_the_flag(tmp_path, command) -> None:
    """demo-ct has 3 classes: 2 weights are refused once the data is loaded, before any training, exit 2: one line
    naming --class-weights, the number given and the number of classes; the profile's folder is not made."""
    from typer.testing import CliRunner

    from dpaudit.cli.main import app

    out = tmp_path / "out"
    res = CliRunner().invoke(app, [*command, "--dataset", "demo-ct", "--image-size", "16", "--class-weights",
                                   "0.1,0.9", "--out", str(out)])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --class-weights must be one weight per class: 3 for background, liver, tumour "
                           "(2 given)"), line
    assert "Fix: pass --class-weights with 3 values, or --class-weights none." in line
    assert "Traceback" not in res.output and not (out / "profile.json").exists() and not (out / "model.pt").exists()
