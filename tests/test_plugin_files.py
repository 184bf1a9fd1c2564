"""COSIImagingLike.from_files on the COSI team's own files, in both frames."""
import warnings

import numpy as np
import pytest
from astromodels import Model, PointSource, Powerlaw
from scipy import stats

from cosi_imaging_plugin.io import read_histogram
from cosi_imaging_plugin.threeml import COSIImagingLike

warnings.filterwarnings("ignore")


@pytest.mark.parametrize("data", ["test_event_histogram_localCDS.hdf5", "test_event_histogram_galacticCDS.hdf5"])
def test_fixture_files_fold_and_match_direct_poisson_sum(fixtures_dir, data):
    # the data themselves serve as a background template so that every non-empty bin has a positive expectation
    plugin = COSIImagingLike.from_files(
        "cosi", response=fixtures_dir / "test_full_detector_response_dense.h5", data=fixtures_dir / data,
        backgrounds={"template": fixtures_dir / data}, orientation=fixtures_dir / "20280301_first_10sec.ori",
        rtol=0.0, log_like_offset="factorial")
    plugin.set_model(Model(PointSource("src", ra=83.6, dec=22.0,
                                       spectral_shape=Powerlaw(K=1e-2, index=-2.0, piv=500.0))))
    counts = read_histogram(fixtures_dir / data).project(["Em", "Phi", "PsiChi"]).contents.todense()
    expected = plugin.get_model_counts().contents.reshape(counts.shape)
    sky = expected - counts  # template norm is 1
    assert sky.sum() > 0  # the source is seen
    assert plugin.get_log_like() == pytest.approx(stats.poisson.logpmf(counts, expected).sum(), rel=1e-10)


def test_exposure_maps_of_both_frames_agree(fixtures_dir):
    exposure = {}
    for data in ["test_event_histogram_localCDS.hdf5", "test_event_histogram_galacticCDS.hdf5"]:
        plugin = COSIImagingLike.from_files(
            "cosi", response=fixtures_dir / "test_full_detector_response_dense.h5", data=fixtures_dir / data,
            orientation=fixtures_dir / "20280301_first_10sec.ori", rtol=0.0)
        exposure[data] = plugin.engine.exposure_map
    local, galactic = exposure.values()
    # the Galactic path folds each attitude bin at its averaged attitude, the local path every 1 s sample.
    # Over these 10 s the pointing moves by 0.5 deg; with weights linear in direction the first-order
    # difference averages out, leaving second order ~ (0.5 / 59 deg pixel)^2 ~ 1e-4: bound it by 1e-3
    np.testing.assert_allclose(galactic, local, rtol=1e-3)


def test_orientation_outside_the_data_time_range_is_refused(fixtures_dir, tmp_path):
    from cosi_imaging_plugin.errors import CosiInputError
    from cosi_imaging_plugin.exposure import Orientation

    data = fixtures_dir / "test_event_histogram_localCDS.hdf5"
    orientation = Orientation.read(fixtures_dir / "20280301_first_10sec.ori")
    shifted = tmp_path / "a_day_later.ori"
    lines = (fixtures_dir / "20280301_first_10sec.ori").read_text().splitlines()
    # the same attitudes one day later: the file's time column moved by 86400 s
    moved = []
    for line in lines:
        fields = line.split()
        if fields and fields[0] == "OG":
            fields[1] = repr(float(fields[1]) + 86400.0)
            line = " ".join(fields)
        moved.append(line)
    shifted.write_text("\n".join(moved) + "\n")
    assert Orientation.read(shifted).unix_seconds[0] == orientation.unix_seconds[0] + 86400.0
    with pytest.raises(CosiInputError, match=r"Time axis .* does not overlap orientation .*a_day_later.ori"):
        COSIImagingLike.from_files("cosi", response=fixtures_dir / "test_full_detector_response_dense.h5",
                                   data=data, orientation=shifted, rtol=0.0, progress=False)
