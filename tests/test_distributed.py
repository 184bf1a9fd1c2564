"""The engine sharded over a Dask LocalCluster (2 workers of 1 thread) against the single-process engine.

Every product is compared at 1e-10 relative: the shards compute each non-empty
bin exactly as the single engine does, and only the sums over shards (the
transpose products, the exposure) are added in another order (float64, ~1e-16).
"""
import os
import signal
import time
import tracemalloc
import warnings

import distributed
import numpy as np
import pytest
from astromodels import Powerlaw
from test_plugin import free_gaussian_model, gaussian_source, truth_image
from threeML import DataList, JointLikelihood

from cosi_imaging_plugin import cli, pipeline
from cosi_imaging_plugin.cli import main
from cosi_imaging_plugin.datasets import COSIDataset
from cosi_imaging_plugin.deconvolution import RichardsonLucy
from cosi_imaging_plugin.detection import TSMapEstimator
from cosi_imaging_plugin.distributed import (
    ShardedEngine,
    check_memory,
    check_versions,
    connect,
    current_mapping_on,
    current_scheduler,
    out_of_core_engine,
    place_mapping,
    plan_columns,
    sharded_engine,
    use_scheduler,
)
from cosi_imaging_plugin.distributed.cluster import workers_of
from cosi_imaging_plugin.distributed.engine import column_work
from cosi_imaging_plugin.engine import CCMMapping, ColumnResponse
from cosi_imaging_plugin.errors import CosiInputError
from cosi_imaging_plugin.io import write_response
from cosi_imaging_plugin.io.histograms import write_histogram
from cosi_imaging_plugin.pipeline import read_fit_config
from cosi_imaging_plugin.threeml import COSIImagingLike
from cosi_imaging_plugin.uncertainty import LIRA

from small_setup import NSIDE_MODEL, dataset_for, generated_response, instrument

RTOL = 1e-10


@pytest.fixture(scope="module")
def client():
    """One LocalCluster of 2 single-thread worker processes for the module (a start costs seconds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, memory_limit="2GB")
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


def sky_image():
    """A smooth positive sky on the model grid: a Gaussian blob on a faint floor, three Ei bins."""
    response, ccm, _, _ = instrument()
    n_pix = ccm.axes[1].nbins
    rng = np.random.default_rng(3)
    image = 2e-5 * (1 + rng.uniform(0, 0.1, (n_pix, 3)))
    image[: n_pix // 8] *= 20.0
    return image


@pytest.fixture(scope="module")
def pair(client):
    """(single-process dataset, the same data on the sharded engine, sky image)."""
    image = sky_image()
    local, _ = dataset_for(image, background_norm=1.0, seed=4)
    response, ccm, _, template = instrument()
    sharded = COSIDataset.from_histograms(local.counts, {"instrumental": template}, response, ccm,
                                          dtype=np.float64, client=client)
    return local, sharded, image


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    scale = np.max(np.abs(a))
    assert np.max(np.abs(a - b)) <= rtol * scale, np.max(np.abs(a - b)) / scale


def record_gathered(client, monkeypatch):
    """The list of every object the client gathers from here on (what crossed to the client)."""
    received = []
    gather = client.gather

    def recording_gather(futures, *args, **kwargs):
        out = gather(futures, *args, **kwargs)
        received.extend(out if isinstance(out, list) else [out])
        return out

    monkeypatch.setattr(client, "gather", recording_gather)
    return received


def test_sharded_engine_equals_single_process_engine(pair):
    local, sharded, image = pair
    le, se = local.engine, sharded.engine
    assert isinstance(se, ShardedEngine) and se.n_shards == 2
    # the shards' bins, one after the other, are the dataset's bins in the engine's order
    np.testing.assert_array_equal(le.data.flat_index, se.data.flat_index)
    norms = {"instrumental": 1.3}
    close(le.exposure_map, se.exposure_map)
    close(le.sky_expectation_at_bins(image), se.sky_expectation_at_bins(image))
    close(le.expectation_at_bins(image, norms), se.expectation_at_bins(image, norms))
    weights = le.data.counts / le.expectation_at_bins(image, norms)
    close(le.transpose_product(weights), se.transpose_product(weights))
    assert le.background_products(weights) == pytest.approx(se.background_products(weights), rel=RTOL)
    assert se.log_likelihood(image, norms) == pytest.approx(le.log_likelihood(image, norms), rel=RTOL)
    close(le.expectation(image, norms).contents, se.expectation(image, norms).contents)
    close(le.expectation_cds(image, norms), se.expectation_cds(image, norms))
    rows = le.source_rows(image, dtype=np.float64)
    close(le.sky_expectation_at_bins(rows=rows, dtype=np.float64),
          se.sky_expectation_at_bins(rows=rows, dtype=np.float64))
    # folds kept on the workers (the plugin's): of images, of source rows, of arrays from here
    images = [image, 0.5 * image]
    close(le.sky_folds_at_bins(images), se.kept_values(se.sky_folds_at_bins(images)))
    close(le.sky_folds_at_bins(rows=[rows, 2 * rows]), se.kept_values(se.sky_folds_at_bins(rows=[rows, 2 * rows])))
    values = np.random.default_rng(1).uniform(size=(2, le.data.nnz))
    close(values, se.kept_values(se.keep_at_bins(values)))
    w = np.array([0.3, 0.7])
    local_terms = [(w, le.sky_folds_at_bins(images)), (np.array([1.0, 0.5]), le.keep_at_bins(values))]
    sharded_terms = [(w, se.sky_folds_at_bins(images)), (np.array([1.0, 0.5]), se.keep_at_bins(values))]
    assert se.log_likelihood_of_terms(sharded_terms, norms, 10.0) == pytest.approx(
        le.log_likelihood_of_terms(local_terms, norms, 10.0), rel=RTOL)


def test_fused_step_keeps_the_bins_on_the_workers_and_equals_single_process(pair, client, monkeypatch):
    """evaluate + ratio_products: the expectations stay on the workers, only numbers and one sky come back."""
    local, sharded, image = pair
    le, se = local.engine, sharded.engine
    norms = {"instrumental": 1.3}
    a, b = le.evaluate(image, norms), se.evaluate(image, norms)
    assert all(isinstance(part, distributed.Future) for part in b.at_bins)
    assert b.log_likelihood == pytest.approx(a.log_likelihood, rel=RTOL)
    assert b.total_expected == pytest.approx(a.total_expected, rel=RTOL)
    close(le.evaluation_at_bins(a), se.evaluation_at_bins(b))
    received = record_gathered(client, monkeypatch)
    # the ratio products were started with the evaluation: asking for them submits nothing more
    assert all(isinstance(part, distributed.Future) for part in b.products)
    submitted = []
    submit = client.submit
    monkeypatch.setattr(client, "submit", lambda *args, **kwargs: submitted.append(args[0]) or submit(*args, **kwargs))
    (ta, pa), (tb, pb) = le.ratio_products(a), se.ratio_products(b)
    close(ta, tb)
    assert pb == pytest.approx(pa, rel=RTOL)
    assert submitted == []
    # what travelled back: the two shards' partial skies and background products, nothing per bin
    assert len(received) == 2
    assert all(part[0].shape == ta.shape for part in received)


def test_shard_tasks_run_where_their_shards_live_when_many_evaluations_are_alive(pair, client):
    """Twenty evaluations kept alive (more than twice the cluster's threads) make Dask take the evaluations for
    root tasks, which it may place on any worker: each must still run on the worker holding its shard, so no
    shard is ever copied to another worker."""
    _, sharded, image = pair
    engine = sharded.engine
    holders = [fact["worker"] for fact in engine.shard_facts()]
    assert len(set(holders)) == 2
    with distributed.get_task_stream(client=client) as stream:
        kept = [engine.evaluate(image * (1 + 0.01 * k), {"instrumental": 1.0}) for k in range(20)]
        for evaluation in kept:
            engine.ratio_products(evaluation)
    # each task names its shard's worker, so the scheduler never takes it for a root task
    keys = [part.key for evaluation in kept for part in evaluation.at_bins]
    restrictions = client.run_on_scheduler(
        lambda dask_scheduler: [sorted(dask_scheduler.tasks[key].worker_restrictions or ()) for key in keys])
    assert restrictions == [[holder] for _ in kept for holder in holders]
    moved = [task["key"] for task in stream.data for part in task["startstops"] if part["action"] == "transfer"]
    assert moved == []
    assert [fact["worker"] for fact in engine.shard_facts()] == holders
    copies = {key: workers for key, workers in client.who_has().items() if "with_data" in str(key)}
    assert len(copies) == 2 and all(len(workers) == 1 for workers in copies.values()), copies


def test_partial_skies_are_reduced_in_a_tree_on_the_workers(pair, client, monkeypatch):
    """Five shards on two workers: the client receives two partial sums, equal to the single-process result."""
    local, sharded, image = pair
    response, ccm, _, template = instrument()
    le = local.engine
    se = sharded_engine(client, response, CCMMapping(ccm), data=local.counts,
                        backgrounds={"instrumental": template}, n_shards=5, dtype=np.float64)
    assert se.n_shards == 5
    a, b = le.evaluate(image), se.evaluate(image)
    assert b.log_likelihood == pytest.approx(a.log_likelihood, rel=RTOL)
    received = []
    gather = client.gather

    def recording_gather(futures, *args, **kwargs):
        received.append(len(futures))
        return gather(futures, *args, **kwargs)

    monkeypatch.setattr(client, "gather", recording_gather)
    (ta, pa), (tb, pb) = le.ratio_products(a), se.ratio_products(b)
    close(ta, tb)
    assert pb == pytest.approx(pa, rel=RTOL)
    assert received == [2]
    weights = le.data.counts / le.evaluation_at_bins(a)
    close(le.transpose_product(weights), se.transpose_product(weights))


def test_ccm_kept_on_the_client_gives_the_same_products_and_rl_images(pair, client):
    """mapping_on='client': the workers hold no CCM, take source rows and return row-space products."""
    local, sharded, image = pair
    response, ccm, _, template = instrument()
    le = local.engine
    se = sharded_engine(client, response, CCMMapping(ccm), data=local.counts,
                        backgrounds={"instrumental": template}, dtype=np.float64, mapping_on="client")
    facts = se.shard_facts()
    assert all(f["mapping_bytes"] == 0 for f in facts)
    assert all(f["mapping_bytes"] == le.mapping.nbytes for f in sharded.engine.shard_facts())
    close(le.exposure_map, se.exposure_map)
    norms = {"instrumental": 0.8}
    a, b = le.evaluate(image, norms), se.evaluate(image, norms)
    assert b.log_likelihood == pytest.approx(a.log_likelihood, rel=RTOL)
    (ta, pa), (tb, pb) = le.ratio_products(a), se.ratio_products(b)
    close(ta, tb)
    assert pb == pytest.approx(pa, rel=RTOL)
    close(le.sky_expectation_at_bins(image), se.sky_expectation_at_bins(image))
    weights = le.data.counts / le.evaluation_at_bins(a)
    close(le.transpose_product(weights), se.transpose_product(weights))
    options = {"iterations": 4, "acceleration": True, "alpha_max": 10.0, "fit_backgrounds": True}
    ra = RichardsonLucy(local, **options).run()
    rb = RichardsonLucy(COSIDataset(se, name=local.name), **options).run()
    for x, y in zip(ra, rb):
        close(x["model"], y["model"])
    with pytest.raises(CosiInputError, match="mapping_on"):
        sharded_engine(client, response, CCMMapping(ccm), mapping_on="scheduler")


def test_rl_images_equal_after_several_iterations(pair):
    local, sharded, _ = pair
    options = {"iterations": 6, "acceleration": True, "alpha_max": 10.0, "response_weighting": True,
               "smoothing_fwhm": 30.0, "fit_backgrounds": True}
    a = RichardsonLucy(local, **options).run()
    b = RichardsonLucy(sharded, **options).run()
    assert len(a) == len(b) == 6
    for ra, rb in zip(a, b):
        close(ra["model"], rb["model"])
        assert rb["background_normalization"] == pytest.approx(ra["background_normalization"], rel=RTOL)


@pytest.fixture(scope="module")
def blob_pair(client):
    """(single-process dataset, sharded dataset) of data drawn from a Gaussian blob and the background."""
    local, _ = dataset_for(truth_image(gaussian_source(sigma=12.0, K=1e-3)), background_norm=1.0, seed=5)
    response, ccm, _, template = instrument()
    sharded = COSIDataset.from_histograms(local.counts, {"instrumental": template}, response, ccm,
                                          dtype=np.float64, client=client)
    return local, sharded


def fit_setup(dataset):
    model = free_gaussian_model()
    plugin = COSIImagingLike("cosi", dataset)
    plugin.set_model(model)
    return model, plugin


def test_plugin_log_likelihood_and_3ml_fit_equal(blob_pair):
    """Equal log-likelihoods anywhere; equal fits up to the minimizer's path.

    The exposure is summed over the shards in another order (~1e-16 relative), which
    may move minuit's steps: the best fits then agree to its convergence, far below
    their errors, and the likelihoods at any one point to 1e-10.
    """
    fits = []
    for dataset in blob_pair:
        model, plugin = fit_setup(dataset)
        start = plugin.get_log_like()
        jl = JointLikelihood(model, DataList(plugin), verbose=False)
        jl.fit(quiet=True)
        free = jl.results.optimized_model.free_parameters
        # offsets in the space minuit fits in (log10 K), where its covariance is
        values = np.array([p.transformation.forward(p.value) if p.has_transformation() else p.value
                           for p in free.values()])
        errors = np.sqrt(np.diag(np.asarray(jl.results.covariance_matrix)))
        fits.append((start, values, errors, plugin.get_log_like(), model, plugin))
    (start_a, values_a, errors_a, best_a, model_a, plugin_a), (start_b, values_b, _, best_b, model_b, plugin_b) = fits
    assert start_b == pytest.approx(start_a, rel=RTOL)
    assert best_b == pytest.approx(best_a, rel=RTOL)
    # the single-process likelihood at the sharded optimum is the sharded one
    for name, par in model_b.free_parameters.items():
        model_a[name].value = par.value
    assert plugin_b.get_log_like() == pytest.approx(plugin_a.get_log_like(), rel=RTOL)
    pulls = np.abs(values_b - values_a) / errors_a
    assert np.all(pulls < 1e-4), pulls


def test_plugin_likelihood_calls_bring_back_only_numbers(blob_pair, client, monkeypatch):
    """The sources' folds stay on the workers: a spectral or a spatial change, a background norm, and the client
    receives one number per shard at each call, the single-process likelihood to 1e-10."""
    (model_a, plugin_a), (model_b, plugin_b) = (fit_setup(dataset) for dataset in blob_pair)
    received = record_gathered(client, monkeypatch)
    changes = [("blob.spectrum.main.Powerlaw.K", 8e-4), ("blob.spectrum.main.Powerlaw.index", -2.1),
               ("blob.Gaussian_on_sphere.sigma", 11.0), ("blob.Gaussian_on_sphere.lon0", 265.0),
               ("cosi_instrumental_norm", 1.05)]
    for name, value in changes:
        for model, plugin in ((model_a, plugin_a), (model_b, plugin_b)):
            (plugin.background_parameters["instrumental"] if name.startswith("cosi") else model[name]).value = value
        received.clear()
        assert plugin_b.get_log_like() == pytest.approx(plugin_a.get_log_like(), rel=RTOL)
        assert len(received) == plugin_b.engine.n_shards, name
        assert all(np.ndim(part) == 0 for part in received), name
    monkeypatch.undo()
    at_bins, total = plugin_a.expectation_at_bins()
    close(at_bins, plugin_b.expectation_at_bins()[0])  # the folds still read back when asked


def test_each_worker_holds_about_half_the_response(pair):
    _, sharded, _ = pair
    response = instrument()[0]
    facts = sharded.engine.shard_facts()
    assert len({f["worker"] for f in facts}) == 2  # one shard per worker
    # the shards partition the stored blocks and the non-empty bins
    assert sum(f["blocks"] for f in facts) == response.n_blocks
    assert sum(f["nnz"] for f in facts) == sharded.engine.data.nnz
    total = response.nbytes + response.tiled_blocks().nbytes
    for fact in facts:
        assert 0.8 * total / 2 < fact["response_bytes"] < 1.2 * total / 2, fact


def test_shards_can_be_balanced_by_the_em_steps_work(pair, client):
    """Cut by the EM step's work (blocks x non-empty bins per column): each shard within one column's work of an
    equal split, and closer to it than the default cut by stored blocks; the same total, the same likelihood."""
    local, sharded, image = pair
    response, ccm, _, template = instrument()
    by_work = sharded_engine(client, response, CCMMapping(ccm), data=local.counts,
                             backgrounds={"instrumental": template}, dtype=np.float64, balance="work")
    by_blocks = sharded.engine  # the default: equal memory
    work = [f["work"] for f in by_work.shard_facts()]
    work_by_blocks = [f["work"] for f in by_blocks.shard_facts()]
    le = local.engine
    per_column = column_work(np.diff(le.response.col_ptr), local.counts, le.n_rows)
    assert sum(work) == sum(work_by_blocks) == int(per_column.sum()) == \
        int(np.diff(le.response.col_ptr)[le.data.column].sum())
    assert abs(work[0] - sum(work) / 2) <= per_column.max()
    assert max(work) / min(work) < max(work_by_blocks) / min(work_by_blocks), (work, work_by_blocks)
    assert by_work.log_likelihood(image) == pytest.approx(by_blocks.log_likelihood(image), rel=RTOL)
    with pytest.raises(CosiInputError, match="balance must be one of"):
        sharded_engine(client, response, CCMMapping(ccm), balance="bins")


def test_shards_read_the_file_on_the_workers(client, tmp_path, monkeypatch):
    """A response file is compressed by the workers, each its columns: never in this process."""
    generated = generated_response()
    path = write_response(tmp_path / "response.h5", generated.axes, generated.contents, dtype=np.float64)
    response, ccm, _, template = instrument()
    local, _ = dataset_for(sky_image(), seed=6)
    single = COSIDataset.from_histograms(local.counts, {"instrumental": template}, path, ccm, dtype=np.float64,
                                         rtol=1e-3)

    def refuse(*args, **kwargs):
        raise AssertionError("the client compressed the response")

    monkeypatch.setattr(ColumnResponse, "from_file", refuse)
    monkeypatch.setattr(ColumnResponse, "from_chunks", refuse)
    sharded = COSIDataset.from_histograms(local.counts, {"instrumental": template}, path, ccm, dtype=np.float64,
                                          rtol=1e-3, client=client)
    facts = sharded.engine.shard_facts()
    assert sum(f["blocks"] for f in facts) == single.engine.response.n_blocks
    image = sky_image()
    close(single.engine.expectation_at_bins(image), sharded.engine.expectation_at_bins(image))
    weights = single.engine.data.counts / single.engine.expectation_at_bins(image)
    close(single.engine.transpose_product(weights), sharded.engine.transpose_product(weights))


def test_column_plan_balances_and_covers():
    weights = np.r_[np.zeros(10), np.ones(100), 50 * np.ones(10), np.zeros(5)]
    ranges = plan_columns(weights, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == weights.size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sums = [weights[lo:hi].sum() for lo, hi in ranges]
    assert max(sums) - min(sums) <= 2 * weights.max()
    assert plan_columns(np.zeros(4), 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(CosiInputError, match="3 CDS columns into 4 shards"):
        plan_columns(np.ones(3), 4)


def test_unreachable_scheduler_is_named():
    with pytest.raises(CosiInputError, match="tcp://127.0.0.1:9 "):
        connect("tcp://127.0.0.1:9", timeout=1)


def test_worker_with_too_little_memory_is_named_before_the_run(client):
    worker = sorted(client.scheduler_info()["workers"])[1]
    with pytest.raises(CosiInputError, match=f"Dask worker {worker} has a memory limit of 2000 MB"):
        check_memory(client, {worker: 5_000_000_000})
    response, ccm, _, template = instrument()
    local, _ = dataset_for(sky_image(), seed=6)
    small = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                                     memory_limit="20MB")
    try:
        with pytest.raises(CosiInputError, match="has a memory limit of 20 MB but its shard"):
            COSIDataset.from_histograms(local.counts, {"instrumental": template}, response, ccm, dtype=np.float64,
                                        client=small)
    finally:
        small.close()


def test_package_version_mismatch_is_named(client):
    from cosi_imaging_plugin.distributed.cluster import package_versions

    local = {**package_versions(), "numpy": "0.0.1"}
    with pytest.raises(CosiInputError, match=r"Dask worker tcp://\S+ runs other package versions.*numpy 0.0.1 here"):
        check_versions(client, local)
    check_versions(client)  # the same environment: no error


def test_worker_killed_mid_run_gives_the_same_images(tmp_path):
    """A worker killed in the middle of an RL iteration: its shard is rebuilt from the file elsewhere.

    The kill comes between the evaluation (expectations left on the workers) and the
    ratio products of the third iteration; the run goes on without any action and every image equals the
    undisturbed run's exactly (the partial skies are summed in shard order).
    """
    generated = generated_response()
    path = write_response(tmp_path / "response.h5", generated.axes, generated.contents, dtype=np.float64)
    _, ccm, _, template = instrument()
    local, _ = dataset_for(sky_image(), seed=8)
    options = {"iterations": 5, "acceleration": True, "alpha_max": 10.0, "fit_backgrounds": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
    try:
        with distributed.Client(cluster, set_as_default=False) as client:
            def dataset():
                return COSIDataset.from_histograms(local.counts, {"instrumental": template}, path, ccm,
                                                   dtype=np.float64, rtol=1e-3, client=client)

            undisturbed = RichardsonLucy(dataset(), **options).run()
            disturbed = dataset()
            engine = disturbed.engine
            victim = engine.shard_facts()[1]["worker"]
            calls = []
            products = engine.ratio_products

            def products_after_kill(evaluation):
                # the expectations of this state are on the workers: the victim's are lost with it
                calls.append(1)
                if len(calls) == 3:
                    pid = client.run(os.getpid, workers=[victim])[victim]
                    os.kill(pid, signal.SIGKILL)
                return products(evaluation)

            engine.ratio_products = products_after_kill
            images = RichardsonLucy(disturbed, **options).run()
            assert len(calls) >= 5
            assert victim not in client.scheduler_info()["workers"]  # the run went on without it
            for a, b in zip(undisturbed, images):
                np.testing.assert_array_equal(a["model"], b["model"])
    finally:
        cluster.close()


def test_out_of_core_engine_within_a_memory_bound_smaller_than_the_response(tmp_path, monkeypatch):
    """Shards of at most a third of the response, streamed from disk: the single engine's results."""
    generated = generated_response()
    path = write_response(tmp_path / "response.h5", generated.axes, generated.contents, dtype=np.float64)
    _, ccm, _, template = instrument()
    local, _ = dataset_for(sky_image(), seed=9)
    single = COSIDataset.from_histograms(local.counts, {"instrumental": template}, path, ccm, dtype=np.float64,
                                         rtol=1e-3).engine
    total = single.response.nbytes + single.response.tiled_blocks().nbytes
    bound = total // 3
    engine = out_of_core_engine(path, CCMMapping(ccm), bound, data=local.counts,
                                backgrounds={"instrumental": template}, directory=tmp_path / "shards", rtol=1e-3,
                                dtype=np.float64, progress=False)
    facts = engine.shard_facts()
    assert len(facts) >= 3
    assert all(f["response_bytes"] < bound for f in facts), [f["response_bytes"] for f in facts]
    assert sum(f["blocks"] for f in facts) == single.response.n_blocks
    image = sky_image()
    tracemalloc.start()
    eps = engine.expectation_at_bins(image)
    product = engine.transpose_product(local.engine.data.counts / eps)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # one shard at work at a time, besides the bins' and the images' arrays of the client
    assert peak < bound + 8 * image.nbytes + 16 * eps.nbytes, (peak, bound)
    close(single.expectation_at_bins(image), eps)
    close(single.transpose_product(local.engine.data.counts / eps), product)
    rl_single = RichardsonLucy(COSIDataset(single, counts=local.counts), iterations=3).run()
    rl_disk = RichardsonLucy(COSIDataset(engine, counts=local.counts), iterations=3).run()
    close(rl_single[-1]["model"], rl_disk[-1]["model"])
    # the plugin's folds, made by streaming the shards once, then likelihood calls without reading them
    (_, plugin_single), (model_disk, plugin_disk) = (fit_setup(COSIDataset(e, counts=local.counts))
                                                     for e in (single, engine))
    assert plugin_disk.get_log_like() == pytest.approx(plugin_single.get_log_like(), rel=RTOL)
    loads = []
    with monkeypatch.context() as patched:
        patched.setattr(engine._shards, "_load", lambda i: loads.append(i))
        model_disk.blob.spectrum.main.Powerlaw.K.value = 7e-4
        plugin_disk.get_log_like()
    assert loads == []
    # the TS map's sums read the stored blocks: each Newton iteration streams the shards from disk
    estimator = TSMapEstimator(Powerlaw(K=1.0, index=-2.0, piv=500.0), nside=NSIDE_MODEL)
    a = estimator.run(COSIDataset(single, counts=local.counts), progress=False)
    b = estimator.run(COSIDataset(engine, counts=local.counts), progress=False)
    np.testing.assert_array_equal(a["niter"], b["niter"])
    for name in ("ts", "norm", "norm_err"):
        close(a[name], b[name])


def test_scheduler_block_shards_datasets_built_inside_it(client):
    response, ccm, _, template = instrument()
    local, _ = dataset_for(sky_image(), seed=10)
    with use_scheduler(client):
        inside = COSIDataset.from_histograms(local.counts, {"instrumental": template}, response, ccm,
                                             dtype=np.float64)
    outside = COSIDataset.from_histograms(local.counts, {"instrumental": template}, response, ccm, dtype=np.float64)
    assert isinstance(inside.engine, ShardedEngine) and not isinstance(outside.engine, ShardedEngine)
    assert inside.log_likelihood(sky_image()) == pytest.approx(outside.log_likelihood(sky_image()), rel=RTOL)


def test_command_line_names_an_unreachable_scheduler(capsys):
    code = main(["--scheduler", "tcp://127.0.0.1:9", "info", "no_such_file.h5"])
    assert code == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err
    # a global option, after the subcommand too
    assert main(["info", "no_such_file.h5", "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


def test_fit_configuration_accepts_a_scheduler():
    source = {"name": "s", "type": "point", "l": 0.0, "b": 0.0,
              "spectrum": {"function": "Powerlaw", "K": 1e-3, "piv": 100.0, "index": -2.0}}
    config = read_fit_config({"data": {"manifest": "x"}, "model": {"sources": [source]},
                              "scheduler": "tcp://127.0.0.1:8786"})
    assert config["scheduler"] == "tcp://127.0.0.1:8786"


def test_ts_map_equals_single_process(pair):
    """TS, norm and its error at every position (the shards' sums added in shard order)."""
    local, sharded, _ = pair
    estimator = TSMapEstimator(Powerlaw(K=1.0, index=-2.0, piv=500.0), nside=NSIDE_MODEL)
    a = estimator.run(local, progress=False)
    b = estimator.run(sharded, progress=False)
    assert np.nanmax(a["ts"]) > 25  # a bright blob: the map is not all noise
    np.testing.assert_array_equal(a["niter"], b["niter"])
    for name in ("ts", "norm", "norm_err"):
        close(a[name], b[name])


def test_place_mapping_by_the_room_of_each_worker():
    needs = {"a": 100, "b": 120}
    assert place_mapping("auto", {"a": 200, "b": 200}, needs, 50)[0] == "workers"
    where, why = place_mapping("auto", {"a": 200, "b": 160}, needs, 50)
    assert where == "client" and "Dask worker b lacks 0.0 MB" in why
    assert place_mapping("auto", {"a": None, "b": None}, needs, 10**12)[0] == "workers"  # no limits
    assert place_mapping("auto", {"a": 10, "b": 10}, needs, 0)[0] == "workers"  # nothing to copy
    assert place_mapping("workers", {"a": 10, "b": 10}, needs, 50) == ("workers", "as asked")
    with pytest.raises(CosiInputError, match="mapping_on must be one of"):
        place_mapping("scheduler", {}, needs, 50)


def test_auto_keeps_the_ccm_on_the_workers_only_when_their_memory_holds_it(caplog):
    """Two fresh LocalClusters (2 workers of 1 thread, 2 GB). In the first the workers' memory holds their shards
    plus the CCM: it goes to the workers. In the second the memory a worker may fill (Dask's pause fraction of its
    limit) is set just below what its fresh process uses plus its shard plus the CCM: the CCM stays on the client.
    The window is the CCM's size (3.4 MB), far above the drift of an idle fresh worker's memory (~0.3 MB)."""
    import dask

    response, ccm, _, template = instrument()
    local, _ = dataset_for(sky_image(), seed=11)
    image = sky_image()

    def on_a_fresh_cluster(run):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                               dashboard_address=None, memory_limit="2GB")
        try:
            with distributed.Client(cluster, set_as_default=False) as client:
                return run(client, lambda: COSIDataset.from_histograms(
                    local.counts, {"instrumental": template}, response, ccm, dtype=np.float64, client=client).engine)
        finally:
            cluster.close()

    def roomy(client, build):
        engine = build()
        assert engine.mapping_on == "workers", engine.placement
        assert "holds its shard plus the 3.4 MB sky mapping" in engine.placement["reason"]
        return dict(engine.placement), engine.log_likelihood(image)

    placement, log_like = on_a_fresh_cluster(roomy)
    shard = max(placement["needs"].values()) - placement["mapping_bytes"]
    assert placement["mapping_bytes"] == CCMMapping(ccm).nbytes > 3e6

    def tight(client, build):
        check_versions(client)  # what the build does first, so that its memory is counted below
        readings = [-1.0]
        for _ in range(30):  # a started worker's memory grows as it imports: wait until it settles
            time.sleep(1.0)
            info = workers_of(client)
            readings.append(max(w["metrics"]["memory"] for w in info.values()))
            if abs(readings[-1] - readings[-2]) < 0.5e6:
                break
        used = readings[-1]
        limit = min(w["memory_limit"] for w in info.values())
        with dask.config.set({"distributed.worker.memory.pause":
                              (used + shard + placement["mapping_bytes"] / 2) / limit}), \
                caplog.at_level("INFO", logger="cosi_imaging_plugin.distributed.engine"):
            engine = build()
        assert engine.mapping_on == "client", engine.placement
        assert "sky mapping on the client: Dask worker tcp://" in caplog.text
        assert all(f["mapping_bytes"] == 0 for f in engine.shard_facts())
        return engine.log_likelihood(image)

    assert on_a_fresh_cluster(tight) == pytest.approx(log_like, rel=RTOL)


def test_mapping_place_reaches_the_engine_from_a_scheduler_block_the_command_line_and_a_fit_configuration(
        client, tmp_path, monkeypatch):
    response, ccm, _, template = instrument()
    local, _ = dataset_for(sky_image(), seed=12)
    with use_scheduler(client, mapping_on="client"):
        inside = COSIDataset.from_histograms(local.counts, {"instrumental": template}, response, ccm,
                                             dtype=np.float64)
        explicit = COSIDataset.from_histograms(local.counts, {"instrumental": template}, response, ccm,
                                               dtype=np.float64, mapping_on="workers")
    assert inside.engine.mapping_on == "client" and explicit.engine.mapping_on == "workers"
    assert current_mapping_on() == "auto"
    # the command line's flag sets the block every command builds its datasets in
    seen = []
    monkeypatch.setattr(cli, "_run", lambda args: seen.append((current_scheduler(), current_mapping_on())))
    assert main(["--scheduler", client.scheduler.address, "info", "x.h5", "--mapping-on", "client"]) == 0
    assert seen[0][0] is not None and seen[0][1] == "client"
    # without --scheduler the flag still reaches a scheduler that a fit configuration names
    assert main(["info", "x.h5", "--mapping-on", "client"]) == 0
    assert seen[1] == (None, "client")
    with pytest.raises(SystemExit):
        main(["--mapping-on", "scheduler", "info", "x.h5"])
    # a fit configuration's key, through the stage that builds the dataset from the configured files
    files = {"response": write_response(tmp_path / "response.h5", generated_response().axes,
                                        generated_response().contents, dtype=np.float64),
             "data": write_histogram(local.counts, tmp_path / "data.h5"),
             "backgrounds": {"instrumental": write_histogram(template, tmp_path / "bkg.h5")},
             "ccm": write_histogram(ccm, tmp_path / "ccm.h5")}
    source = {"name": "s", "type": "point", "l": 0.0, "b": 0.0,
              "spectrum": {"function": "Powerlaw", "K": 1e-3, "piv": 100.0, "index": -2.0}}
    config = pipeline.read_fit_config({"data": {"manifest": "x"}, "model": {"sources": [source]},
                                       "scheduler": client, "mapping_on": "client"})
    dataset = pipeline._analysis_dataset({k: files[k] for k in files}, 1e-3, False, config["scheduler"],
                                         config["mapping_on"])
    assert dataset.engine.mapping_on == "client"
    with pytest.raises(CosiInputError, match="'mapping_on' must be one of .*'scheduler'"):
        pipeline.read_fit_config({**config, "mapping_on": "scheduler"})


def test_lira_on_a_sharded_engine_is_refused_by_name(pair):
    """The allocation walks every response entry in one process: a sharded dataset gets a clear error, not an
    AttributeError from deep inside the sampler."""
    _, sharded, _ = pair
    with pytest.raises(CosiInputError, match="LIRA.*single-process engine.*without a Dask client"):
        LIRA(sharded, n_chains=1, n_samples=2, burn_in=0, progress=False).run()
