"""Plot helpers (infra/plotting.py) on the inputs that broke a finished run."""

from __future__ import annotations

import numpy as np

from infalign.infra.plotting import error_bar_lengths


def test_error_bars_never_negative_when_the_mean_lies_outside_its_interval():
    # a win rate of 1 whose bootstrap bounds differ from the mean by float rounding (seen in a
    # paper_hacking run at KL 4: mean 1 - 2.9e-15, high 1 - 4.0e-15), and a skewed percentile CI
    mean = [0.9999999999999971, 0.70, 0.5]
    low = [0.9999999999999951, 0.72, 0.4]
    high = [0.999999999999996, 0.80, 0.6]
    err = error_bar_lengths(mean, low, high)
    assert err.shape == (2, 3) and (err >= 0).all()
    np.testing.assert_allclose(err[:, 2], [0.1, 0.1])
    np.testing.assert_allclose(err[:, 1], [0.0, 0.10])


def test_the_run_plot_draws_a_win_rate_of_one(tmp_path):
    """pipeline/run_plot.plot_win_rates with the numbers that failed the run writes its PNG."""
    from infalign.math.procedures import BestOfN
    from infalign.pipeline.run_plot import plot_win_rates
    from infalign.pipeline.run_record import RunRecord
    from test_run_record import finished_json

    data = finished_json()
    data["eval"]["judges"]["reward_model"]["bon4_win_rate"] = {
        "mean": 0.9999999999999971, "low": 0.9999999999999951, "high": 0.999999999999996, "n_prompts": 8}
    plot_win_rates(RunRecord.from_json(data), BestOfN(4), tmp_path / "win.png")
    assert (tmp_path / "win.png").stat().st_size > 0


def test_the_run_plot_ticks_each_n_in_plain_numbers(tmp_path, monkeypatch):
    """The x axis is ticked at the evaluated N and the procedure's N (3 is not a power of two, which
    log ticks would skip), labelled "3", not TeX's 2^k."""
    import infalign.infra.plotting as plotting
    from infalign.math.procedures import BestOfN
    from infalign.pipeline.run_plot import plot_win_rates
    from infalign.pipeline.run_record import RunRecord
    from test_run_record import finished_json

    drawn, save = [], plotting.save_png
    monkeypatch.setattr(plotting, "save_png", lambda fig, path: (drawn.append(fig), save(fig, path)))
    data = finished_json()
    data["eval"]["ns"] = [1, 3, 8]
    for cols in data["eval"]["judges"].values():
        cols["bon3_win_rate"] = cols["bon8_win_rate"] = cols["bon4_win_rate"]
    plot_win_rates(RunRecord.from_json(data), BestOfN(4), tmp_path / "win.png")
    (ax,) = drawn[0].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3", "4", "8"]
    assert ax.get_xscale() == "log" and not ax.xaxis.get_minorticklocs().size


def test_the_run_plots_theory_line_passes_through_every_evaluated_n(tmp_path, monkeypatch):
    """The record holds the theory's win rate at every evaluated N (pipeline/evaluate.theory_prediction);
    the plot draws it there, not as a chord from N = 1 to the procedure's N (which at N = 2 read 1.1
    points below the theory in a review's exp(4) bon4 run, and left N = 8 out)."""
    import infalign.infra.plotting as plotting
    from infalign.math.procedures import BestOfN
    from infalign.pipeline.run_plot import plot_win_rates
    from infalign.pipeline.run_record import RunRecord
    from test_run_record import finished_json

    drawn, save = [], plotting.save_png
    monkeypatch.setattr(plotting, "save_png", lambda fig, path: (drawn.append(fig), save(fig, path)))
    data = finished_json()
    data["eval"]["ns"] = [1, 2, 4, 8]
    for cols in data["eval"]["judges"].values():
        cols["bon2_win_rate"] = cols["bon8_win_rate"] = cols["bon4_win_rate"]
    theory = {"beta": 20.0, "resolved": True, "kl": 0.3, "standard_win_rate": 0.70, "bon1_win_rate": 0.70,
              "bon2_win_rate": 0.7788, "bon4_win_rate": 0.81, "bon8_win_rate": 0.836}
    theory["at_measured_kl"] = {"kl": 0.25, "reachable": True, "standard_win_rate": 0.69, "bon1_win_rate": 0.69,
                                "bon2_win_rate": 0.77, "bon4_win_rate": 0.80, "bon8_win_rate": 0.83}
    data["eval"]["theory"] = theory
    plot_win_rates(RunRecord.from_json(data), BestOfN(4), tmp_path / "win.png")
    (ax,) = drawn[0].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    at_beta = lines["theory at beta=20"]
    measured = next(line for label, line in lines.items() if label.startswith("theory at measured KL"))
    assert list(at_beta.get_xdata()) == [1, 2, 4, 8]
    assert list(at_beta.get_ydata()) == [0.70, 0.7788, 0.81, 0.836]
    assert list(measured.get_xdata()) == [1, 2, 4, 8] and list(measured.get_ydata()) == [0.69, 0.77, 0.80, 0.83]


def test_a_long_suptitle_is_wrapped_inside_the_figure_above_its_axes(tmp_path):
    """Numbers audit: the report's gain_vs_kl.png title ran past both edges of the figure ("...n at matched
    KL, band: ..." ... "theory's g"). save_png wraps it to the figure's width and leaves it room above the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from infalign.infra.plotting import figure, save_png

    for width, text in ((6.0, "gain at matched KL, band: paired 95% CI over prompts only (filled marker: "
                                "significant by every interval, beyond the chord check); dashed: the theory's gain"),
                        (6.0, "W " * 45),  # wide glyphs (review finding: ~0.6 em a character ran past the edges)
                        (12.0, "short")):
        fig = figure(figsize=(width, 4))
        ax = fig.subplots()
        ax.set_title("panel")
        fig.suptitle(text, fontsize=11)
        save_png(fig, tmp_path / "t.png")
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        title = fig._suptitle.get_window_extent(renderer)
        assert 0 <= title.x0 and title.x1 <= fig.bbox.x1 and title.y1 <= fig.bbox.y1  # inside the figure
        assert title.y0 >= ax.title.get_window_extent(renderer).y1  # above the panel's own title
        assert ("\n" in fig._suptitle.get_text()) is (width == 6.0)
