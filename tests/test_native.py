"""llama.cpp's own tools: llama-server answers OpenAI-style chats, llama-bench parses.

The tools are built by `make setup` (llmops_lib/data/build_llama_tools.sh); only their absence skips
the tests that run them, and the skip message says how to build them.
"""

from __future__ import annotations

import math

import pytest

from llmops_lib.core.errors import UnknownNameError
from llmops_lib.engines import servers
from llmops_lib.engines.process import port_is_free
from llmops_lib.lessons import loadtest
from llmops_lib.planning import tools
from llmops_lib.planning.profiles import get as get_profile
from llmops_lib.programs import llama_bench
from llmops_lib.session import Session


def _missing_tools() -> str | None:
    try:
        for name in ("llama-server", "llama-bench"):  # the ones these tests run
            tools.tool_path(name)
    except tools.ToolsNotBuiltError as err:
        return str(err)
    return None


MISSING = _missing_tools()
needs_tools = pytest.mark.skipif(MISSING is not None, reason=f"llama.cpp tools missing: {MISSING}")

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name one colour."},
]


def test_missing_build_names_the_command_that_builds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path))
    with pytest.raises(tools.ToolsNotBuiltError) as err:
        tools.tool_path("llama-server")
    assert "make setup" in str(err.value)
    assert "llmops_lib/data/build_llama_tools.sh" in str(err.value)


def test_without_a_checkout_the_hint_names_no_make_and_no_scripts_folder():
    hint = tools.build_hint(checkout=False)
    assert "make" not in hint and "scripts/" not in hint
    assert "first llama.cpp cell" in hint and f"bash {tools.SCRIPT} --print-wheel" in hint


@pytest.mark.model
def test_bad_arguments_are_named(session):
    path = session.model_path("chat")
    with pytest.raises(ValueError, match="n_parallel=0"):
        servers.LlamaServer(path, n_parallel=0)
    with pytest.raises(ValueError, match="llama-cpp"):
        tools.tool_path("llama-cpp")
    with pytest.raises(FileNotFoundError, match="no-such.gguf"):
        llama_bench.llama_bench("no-such.gguf")


def test_a_profile_without_a_gguf_chat_model_is_refused(session):
    multi = Session(profile=get_profile("multi-gpu"), hardware=session.hardware)
    with pytest.raises(ValueError, match="needs a GGUF model"):
        multi.server("llama-server")


def test_a_table_without_both_phases_is_named():
    only_decode = llama_bench.parse_bench_json(
        '[{"n_prompt": 0, "n_gen": 16, "n_threads": 2, "avg_ts": 50.0, "stddev_ts": 1.0,'
        ' "samples_ts": [49.0, 51.0], "backends": "CPU", "n_gpu_layers": 0,'
        ' "model_type": "gemma3 270M Q4_K - Medium"}]'
    )
    with pytest.raises(ValueError, match=r"n_depth=\(0, n_prompt\)"):
        llama_bench.phase_tps(only_decode)


@needs_tools
@pytest.mark.model
def test_llama_bench_output_parses_into_finite_figures(session):
    table = llama_bench.llama_bench(
        session.model_path("chat"), n_threads=1, n_prompt=16, n_gen=8, reps=2, n_depth=(0, 16)
    )
    assert list(table["test"]) == ["pp16", "tg8", "pp16@d16", "tg8@d16"]
    assert (table["n_threads"] == 1).all() and (table["reps"] == 2).all()
    for column in ("tokens_per_s", "tokens_per_s_std"):
        assert all(math.isfinite(x) for x in table[column])
    assert (table["tokens_per_s"] > 0).all()
    # The library's figures are set beside the raw engine's, phase by phase.
    compared = llama_bench.versus_library(table, prompt_tps=100.0, generated_tps=10.0)
    pp, tg = table["tokens_per_s"].iloc[[0, 3]]  # prefill from empty, decode after the prompt
    assert list(compared["llama-bench"]) == [pp, tg]
    assert list(compared["ratio"]) == pytest.approx([100.0 / pp, 10.0 / tg])
    # The run is shown as a terminal shows it: the argv and the raw JSON, no local folders.
    shown = llama_bench.shown_run(table)
    command, *json_lines = shown.splitlines()
    assert command == (
        f"$ llama-bench -m {session.model_path('chat').name} -t 1 -p 16 -n 8 -r 2 -o json -d 0,16"
    )
    assert '"avg_ts":' in shown and "3 more tests" in json_lines[-1]
    assert "/" not in shown  # neither the tool's nor the model's folder


def test_a_shown_command_names_files_not_folders():
    argv = ["/opt/x/llama-quantize", "/home/u/.cache/m.gguf", "out dir/q.gguf", 4]
    shown = tools.shown_command(argv)
    assert shown == "llama-quantize m.gguf 'out dir/q.gguf' 4"


def test_a_skipped_bench_says_why_instead_of_a_command(no_tools, tmp_path, capsys):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    table = llama_bench.llama_bench(model, n_threads=2, n_prompt=16, n_gen=8)
    assert llama_bench.shown_run(table).startswith("llama-bench did not run: ")
    assert "make setup" in llama_bench.shown_run(table)


@needs_tools
@pytest.mark.model
def test_llama_server_answers_openai_chat_and_frees_its_port(session, tiny_chat, no_network):
    with session.server("llama-server", n_parallel=2, n_ctx=1024, n_threads=1) as server:
        port, process = server.port, server.process
        # Two slots of the requested context each.
        props = server.get_json("/props")
        assert props["total_slots"] == 2
        assert props["default_generation_settings"]["n_ctx"] == 1024
        # The GGUF's own template (--jinja), rendered as the in-process library renders it.
        rendered = server.post_json("/apply-template", {"messages": MESSAGES})["prompt"]
        assert rendered == tiny_chat.prompt_text(MESSAGES)

        reply = server.client().chat.completions.create(
            model=server.model, messages=MESSAGES, max_tokens=8, temperature=0
        )
        assert reply.usage.prompt_tokens == tiny_chat.count_tokens(MESSAGES)
        assert 1 <= reply.usage.completion_tokens <= 8
        assert reply.choices[0].finish_reason in {"stop", "length"}
        assert isinstance(reply.choices[0].message.content, str)
    assert process.poll() is not None
    assert server.process is None
    assert port_is_free(port)


@needs_tools
@pytest.mark.model
def test_llama_server_is_stopped_when_the_block_raises(session):
    with pytest.raises(RuntimeError, match="lesson failed"):
        with session.server("llama-server", n_threads=1, n_ctx=512) as server:
            port, process = server.port, server.process
            raise RuntimeError("lesson failed")
    assert process.poll() is not None
    assert port_is_free(port)


@needs_tools
@pytest.mark.model
def test_load_test_serves_each_level_with_its_own_slots_and_stops_every_server(session):
    import psutil

    def servers() -> set[int]:  # llama-servers of this process (a fixture may hold one)
        children = psutil.Process().children(recursive=True)
        return {p.pid for p in children if "llama-server" in p.name()}

    before = servers()
    table = loadtest.per_level_servers(
        lambda n: session.server("llama-server", n_parallel=n, n_ctx=1024),
        users=(1, 2),
        requests_per_user=1,
        max_tokens=4,
    )
    assert list(table.index) == [1, 2]
    assert (table["requests"] == table.index).all()  # one request per user, none lost
    assert (table["failed"] == 0).all()
    assert (table["tokens_per_s"] > 0).all()
    assert servers() - before == set()


# Without the tools (a user skipped the build), the lessons' tool sections print one line and
# go on with tables of no figures; only the direct lookup (tool_path) raises.


@pytest.fixture
def no_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path / "empty-cache"))
    import matplotlib

    matplotlib.use("Agg")
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _said_once(capsys) -> str:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped")]
    assert len(lines) == 1 and "not built" in lines[0] and "\n" not in lines[0]
    return lines[0]


def test_without_tools_a_load_test_of_llama_server_prints_why_and_goes_on(no_tools, capsys):
    class Server:  # what session.server("llama-server") does first: find the tool
        def __enter__(self):
            tools.tool_path("llama-server")

        def __exit__(self, *exc):
            return False

    assert tools.missing("llama-server") is not None
    table = loadtest.per_level_servers(lambda n: Server(), users=(1, 2, 4, 8))
    _said_once(capsys)
    assert list(table.index) == [1, 2, 4, 8] and table["tokens_per_s"].isna().all()
    assert table.attrs["skipped"] and math.isnan(
        table["tokens_per_s"][4] / table["tokens_per_s"][1]
    )
    loadtest.plot({"queued": table, "batched": table})  # notebook 03's next cell


def test_without_tools_llama_bench_gives_its_rows_with_no_figures(no_tools, tmp_path, capsys):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    table = llama_bench.llama_bench(model, n_threads=2, n_prompt=16, n_gen=8, n_depth=(0, 16))
    _said_once(capsys)
    assert list(table["test"]) == ["pp16", "tg8", "pp16@d16", "tg8@d16"]
    compared = llama_bench.versus_library(table, prompt_tps=100.0, generated_tps=10.0)
    assert compared["ratio"].isna().all()  # notebook 07 shows NaN, it does not stop


def test_without_tools_a_decode_only_bench_gives_only_its_rows(no_tools, tmp_path, capsys):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    table = llama_bench.llama_bench(model, n_prompt=0, n_gen=8, n_depth=(1024,), kv_type="q8_0")
    _said_once(capsys)
    assert list(table["test"]) == ["tg8@d1024"]
    with pytest.raises(UnknownNameError, match="KV cache type 'fp8'"):
        llama_bench.llama_bench(model, n_prompt=0, n_gen=8, kv_type="fp8")


def test_without_tools_the_quantization_sweep_gives_rows_the_later_cells_accept(
    no_tools, tmp_path, capsys
):
    from llmops_lib.lessons.nb09 import quant_sweep

    settings = quant_sweep.QUICK
    assert quant_sweep.quantized_files(tmp_path / "never-read.gguf", settings) == {}
    _said_once(capsys)
    table = quant_sweep.measure({}, settings)
    _said_once(capsys)
    assert list(table.index) == [quant_sweep.REFERENCE, *settings.types]
    assert table.attrs["scored_tokens"] == 0 and table["ppl"].isna().all()
    # What notebook 09's later cells do with it.
    quant_sweep.plot_quality(table)
    quant_sweep.plot_speed(table, {"2 threads": 10.0})
    quant_sweep.beside_published(table)
    assert quant_sweep.smallest_within(table, 5) == quant_sweep.REFERENCE
    said = f"{table.loc['Q8_0', 'size_vs_f16']:.0%} {table.loc['Q2_K', 'kld']:.2f}"
    assert said == "nan% nan"
    with pytest.raises(tools.ToolsNotBuiltError):  # the direct lookup still raises
        tools.tool_path("llama-quantize")
