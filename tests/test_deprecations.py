"""Import paths that moved keep working for one release, with a DeprecationWarning naming the new place.

(The aliases of ``io.orientation``, ``io.exposure_table``, ``io.Orientation`` and
``io.ExposureTable`` are tested in ``test_orientation.py``.)
"""
import importlib
import sys

import numpy as np
import pytest

import cosi_imaging_plugin.cli as cli
import cosi_imaging_plugin.datasets.engine_builder as engine_builder
import cosi_imaging_plugin.deconvolution as deconvolution
import cosi_imaging_plugin.io.deconvolution_results as deconvolution_results
import cosi_imaging_plugin.io.manifest as manifest
import cosi_imaging_plugin.plots as plots
import cosi_imaging_plugin.sky as sky
import cosi_imaging_plugin.threeml.source_folders as source_folders
from cosi_imaging_plugin.deconvolution import parameters

from small_setup import EI_EDGES, NSIDE_MODEL, dataset_for, instrument

# a dataset of background counts only
EMPTY_SKY = np.zeros((12 * NSIDE_MODEL**2, len(EI_EDGES) - 1))


def fresh_import(name):
    """Import `name` anew, so that its module-level warning fires again."""
    sys.modules.pop(name, None)
    return importlib.import_module(name)


@pytest.mark.parametrize("old, names, new", [
    ("cosi_imaging_plugin.engine.builders", ["psichi_frame", "reduce_axes", "load_response"], engine_builder),
    ("cosi_imaging_plugin.simulate.sky_models", ["PRESETS", "build_sources", "source_image", "sky_image"], sky),
    ("cosi_imaging_plugin.threeml.source_folding", ["PointSourceFolder", "ExtendedSourceFolder", "folder_for"],
     source_folders),
    ("cosi_imaging_plugin.deconvolution.algorithms", ["RichardsonLucy", "MAPRichardsonLucy", "PriorTSV"],
     deconvolution),
    ("cosi_imaging_plugin.deconvolution.algorithms", ["ALGORITHMS", "normalize_parameter"], parameters),
    ("cosi_imaging_plugin.deconvolution.plots", ["plot_convergence", "plot_image", "save_plots"], plots),
    ("cosi_imaging_plugin.deconvolution.cli", ["deconvolve_main"], cli),
    ("cosi_imaging_plugin.deconvolution.results", ["load_results", "save_results", "results_table"],
     deconvolution_results),
    ("cosi_imaging_plugin.products", ["save_image"], plots),
])
def test_moved_modules_warn_and_give_the_new_objects(old, names, new):
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated .* removed in cosi_imaging_plugin 0.3"):
        module = fresh_import(old)
    for name in names:
        assert getattr(module, name) is getattr(new, name)


@pytest.mark.parametrize("name, new", [
    ("build_sources", sky.build_sources),
    ("PRESETS", sky.PRESETS),
    ("load_manifest", manifest.read_manifest),
    ("Manifest", manifest.Manifest),
    ("simulate_main", cli.simulate_main),
])
def test_moved_simulate_names_warn(name, new):
    import cosi_imaging_plugin.simulate as simulate

    with pytest.warns(DeprecationWarning, match=f"cosi_imaging_plugin.simulate.{name} is deprecated"):
        assert getattr(simulate, name) is new
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        simulate.no_such_name  # noqa: B018


def test_old_build_engine_returns_the_engine():
    with pytest.warns(DeprecationWarning):
        builders = fresh_import("cosi_imaging_plugin.engine.builders")
    response, ccm, _, template = instrument()
    engine = builders.build_engine(response, template, backgrounds={"instrumental": template}, ccm=ccm)
    assert engine.background_names == ["instrumental"]


def test_plugin_on_an_engine_warns_and_wraps_it():
    from cosi_imaging_plugin.threeml import COSIImagingLike

    dataset, _ = dataset_for(EMPTY_SKY, seed=1)
    with pytest.warns(DeprecationWarning, match=r"COSIImagingLike\(name, engine\) is deprecated"):
        plugin = COSIImagingLike("cosi", dataset.engine)
    assert plugin.dataset.engine is dataset.engine and plugin.dataset.name == "cosi"
