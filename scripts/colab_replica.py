"""A Colab replica: every notebook run the way a workshop attendee's badge click and "Run all"
run it, on a runtime as close to Colab's CPU image as this machine allows (`make colab-replica`).

1. The image: Colab's Python (3.13) where this machine has it, and Colab's version of every
   package the course imports and of their dependencies (tests/colab/pip-freeze.cpu.txt), from
   PyPI only, with a google.colab stand-in; built once per run (scripts/replica/image.py).
2. The course's llama.cpp release asset, built with its release recipe (or --assets DIR) and
   served on 127.0.0.1 as LLMOPS_LLAMA_RELEASE_URL (scripts/replica/assets.py).
3. Each notebook as a new runtime: a hard-linked copy of the image, a fresh HOME and content
   folder, a fresh kernel of Colab's kernel class; its own setup cell, unchanged but for the
   install URL, which points at a local clone of the checked-out commit (runtime.py).
4. The report: per notebook the seconds to the end of the setup cell, to the first model
   answer and in all, pass or fail, and every deviation from Colab (report.py), on stdout and
   as JSON/CSV in results/colab-replica/ (gitignored). Exit 1 when a notebook fails.

    .venv/bin/python scripts/colab_replica.py [NOTEBOOK ...] [--assets DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replica import assets, image, report  # noqa: E402
from replica.runtime import (  # noqa: E402
    SYSTEM_PATH,
    Runtime,
    clean_env,
    rewrite_setup,
    run_notebook,
    stop_leftovers,
)

from llmops_lib.core import links  # noqa: E402

ROOT = image.ROOT
CONTENT = Path("/content")  # Colab's; nothing of the replica may write there


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="colab_replica.py", description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", help="e.g. 00 04 (default: all)")
    parser.add_argument("--assets", type=Path, help="a folder holding the CPU release asset")
    parser.add_argument("--python", help="the interpreter for the image (default: searched)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "colab-replica")
    parser.add_argument("--second-run", default="04", help="notebook run twice in one runtime")
    parser.add_argument("--setup-limit", type=float, default=900, help="stop a setup cell, s")
    parser.add_argument("--cell-limit", type=float, default=900, help="stop any other cell, s")
    parser.add_argument("--deadline-min", type=float, default=60, help="start no runtime after")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--reuse", type=Path, help="a work folder kept by --keep: its image, not a new build"
    )
    return parser.parse_args(argv)


def clone(work: Path) -> tuple[Path, str, bool]:
    """(a local clone of the checked-out commit at work/git/<slug>, the commit, whether the
    checkout has changes the clone lacks)."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.check_output([*git, "rev-parse", "HEAD"], text=True).strip()
    dirty = bool(subprocess.check_output([*git, "status", "--porcelain"], text=True).strip())
    target = work / "git" / links.GITHUB_SLUG
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(target)], check=True)
    here = ["git", "-C", str(target)]
    subprocess.run([*here, "fetch", "-q", str(ROOT), "HEAD"], check=True)
    subprocess.run([*here, "checkout", "-q", "-B", "replica", commit], check=True)
    return target, commit, dirty


def pick(names: list[str], folder: Path) -> list[str]:
    """The notebooks named (a file name or its two-digit number), in course order."""
    every = [p.name for p in links.notebook_paths(folder)]
    if not names:
        return every
    chosen = []
    for name in names:
        found = [n for n in every if n == Path(name).name or n[:2] == name]
        if not found:
            raise SystemExit(f"colab_replica: no notebook {name!r}; there are {', '.join(every)}")
        chosen += found
    return [n for n in every if n in chosen]


def machine_deviations(python: Path, version: str, looked: list[str]) -> list[str]:
    """How this machine differs from Colab's CPU runtime."""
    os_name = platform.freedesktop_os_release().get("PRETTY_NAME", platform.platform())
    ram = psutil.virtual_memory().total / 1e9
    lines = [
        f"Python {version} at {python} (looked at: {', '.join(looked)}); Colab has "
        f"{image.COLAB_PYTHON}",
        f"OS {os_name} (glibc {platform.libc_ver()[1]}); Colab: {image.COLAB_OS}",
        f"CPU {psutil.cpu_count()} logical / {psutil.cpu_count(logical=False)} physical cores, "
        f"{ram:.1f} GB RAM; Colab's CPU runtime: {image.COLAB_CPU}",
        "times start at the kernel's start: Colab's VM assignment before it is not modelled",
        "network: package registries only; Colab also reaches GitHub and the Hugging Face Hub",
        "kernel: Colab's kernel and shell classes by name (a stand-in); %pip and ! run through "
        "IPython's shell, not Colab's _system_commands",
        "/content: a folder per runtime (LLMOPS_COLAB_CONTENT), the kernel's working directory",
    ]
    if shutil.which("ninja", path=SYSTEM_PATH):
        lines.append("the system has ninja (Colab has none; a source build fetches it from PyPI)")
    return lines


def image_deviations(img: image.Image) -> list[str]:
    """How the image differs from Colab's CPU image, package by package."""
    pins, notes = image.pypi_pins(image.read_freeze())
    changed, extra = image.differences(img.packages, pins)
    lines = [note for name, note in notes.items() if name in img.packages]
    left_out = [name for name in notes if name not in img.packages]
    if left_out:
        lines.append(f"Colab packages from URLs left out (the course uses none): {left_out}")
    if changed:
        lines.append(
            "in another version than Colab's: "
            + ", ".join(f"{n} {v} (Colab {c})" for n, (c, v) in changed.items())
        )
    if extra:
        lines.append(
            f"not on Colab ({len(extra)}): " + ", ".join(f"{n} {v}" for n, v in extra.items())
        )
    if img.unread:
        lines.append(f"requirements not walked (not installed here): {', '.join(img.unread)}")
    return lines


def build_image(work: Path, python: Path, version: str) -> image.Image:
    """The image at work/image, built at work/env (where each runtime's copy lives), or the
    one an earlier run built there (--reuse); its description in work/image.json."""
    record = work / "image.json"
    if record.is_file():
        print(f"Image: reusing {work / 'image'} (built by an earlier run)", flush=True)
        return image.Image(**{**json.loads(record.read_text()), "path": work / "image"})
    freeze = image.read_freeze()
    pins, _ = image.pypi_pins(freeze)
    names, unread = image.selection(image.course_requirements(), freeze)
    env_path, home = work / "env", work / "build-home"
    home.mkdir()
    began = time.monotonic()
    print(f"Building the image: {len(names)} Colab packages and their dependencies ...", flush=True)
    image.build(python, env_path, pins, names, clean_env(home, env_path), work / "image.log")
    packages = image.installed(env_path / "bin" / "python")
    env_path.rename(work / "image")
    built = work / "image"
    img = image.Image(
        built, version, packages, time.monotonic() - began, image.file_states(built), unread
    )
    record.write_text(json.dumps({k: v for k, v in vars(img).items() if k != "path"}))
    print(f"Image ready in {img.build_s:.0f} s: {len(packages)} packages.", flush=True)
    return img


def release_asset(
    repo: Path, given: Path | None, python: Path, version: str, work: Path
) -> tuple[Path | None, str]:
    """The CPU release asset (assets.provide), built if need be as the release workflow builds
    it: Colab's Python, the library installed from the checkout, the recipe run with it."""

    def build_env() -> dict[str, str]:
        venv = work / "asset-venv"
        env = {**clean_env(work / "asset-home", venv), "PYTHON": str(venv / "bin" / "python")}
        image.run([str(python), "-m", "venv", str(venv)], env, work / "asset.log")
        image.run([env["PYTHON"], "-m", "pip", "install", "-q", str(repo)], env, work / "asset.log")
        return env

    return assets.provide(
        repo, given, assets.default_cache(), build_env, version, work / "asset.log"
    )


def run_runtime(
    name: str, nb_path: Path, work: Path, img: image.Image, pins: dict, server, args, url: str
) -> report.Notebook:
    """One notebook as a new runtime: a fresh copy of the image, HOME and content folder."""
    began = time.monotonic()
    image.hardlink_copy(img.path, work / "env")
    runtime = Runtime(work / "runtimes" / name[:2], work / "env", work / "drive", server.url)
    runtime.create()
    nb = rewrite_setup(nbformat.read(nb_path, as_version=4), url)
    ready = time.monotonic() - began
    print(f"[{name[:2]}] runtime ready in {ready:.1f} s; Run all ...", flush=True)
    first_log = len(server.log)
    found = report.Notebook(run_notebook(nb, name, runtime, args.setup_limit, args.cell_limit))
    found.leftovers = stop_leftovers(runtime)
    if name[:2] == args.second_run and found.run.first_answer_cell is not None:
        again = rewrite_setup(nbformat.read(nb_path, as_version=4), url)
        found.second = run_notebook(
            again, name, runtime, args.setup_limit, args.cell_limit, found.run.first_answer_cell
        )
        found.leftovers += stop_leftovers(runtime)
    found.asset_requests = server.log[first_log:]
    after = image.installed(work / "env" / "bin" / "python")
    found.packages = report.package_changes(img.packages, after, pins)
    found.image_changed = image.changed_files(img.path, img.files)
    if CONTENT.exists():
        found.outside.append(f"{CONTENT} (moved to {runtime.root / 'leaked-content'})")
        shutil.move(str(CONTENT), runtime.root / "leaked-content")
    (work / "env").rename(runtime.root / "env")  # kept with the runtime; removed at the end
    why = found.failures()
    print(
        f"[{name[:2]}] {'FAIL' if why else 'pass'} in {found.run.total_s:.0f} s"
        + (f": {why[0]}" if why else ""),
        flush=True,
    )
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    if CONTENT.exists():
        raise SystemExit(f"colab_replica: {CONTENT} exists here; a runtime would see it. Move it.")
    work = args.reuse or Path(tempfile.mkdtemp(prefix="llmops-colab-replica-", dir=args.workdir))
    for stale in ("git", "runtimes", "drive", "env", "no-assets", "asset-venv", "asset-home"):
        shutil.rmtree(work / stale, ignore_errors=True)
    try:
        repo, commit, dirty = clone(work)
        names = pick(args.notebooks, repo)
        print(
            f"Colab replica of {commit[:12]}{' (uncommitted changes left out)' * dirty}: "
            f"{len(names)} notebooks; work folder {work}",
            flush=True,
        )
        python, version, looked = image.find_python(args.python)
        deviations = machine_deviations(python, version, looked)
        with ThreadPoolExecutor(1) as pool:  # the asset compiles while the image downloads
            asset = pool.submit(release_asset, repo, args.assets, python, version, work)
            img = build_image(work, python, version)
            asset_dir, asset_note = asset.result()
        deviations += image_deviations(img)
        pins, _ = image.pypi_pins(image.read_freeze())
        print(f"Release asset: {asset_note}", flush=True)
        if asset_dir is None:
            asset_dir = work / "no-assets"
            asset_dir.mkdir()
            deviations.append(f"no release asset ({asset_note}): setup() gets none to download")
        url = links.pip_install_url(ref=commit, host=f"file://{work / 'git'}")
        notebooks: list[report.Notebook] = []
        skipped = []
        with assets.serve(asset_dir) as server:
            for name in names:
                if time.monotonic() - started > args.deadline_min * 60:
                    skipped.append(name)
                    continue
                notebooks.append(
                    run_runtime(name, repo / "notebooks" / name, work, img, pins, server, args, url)
                )
        total_s = time.monotonic() - started
        print()
        print(report.table(notebooks).to_string(index=False))
        print()
        print("\n".join(report.details(notebooks)))
        print("\nBudgets (printed, not failed; a setup cell over 2 min fails its notebook):")
        budgets = report.budget_lines(notebooks, total_s)
        print("\n".join(budgets))
        if skipped:
            print(f"NOT RUN (past the {args.deadline_min:.0f}-min deadline): {', '.join(skipped)}")
        print("\nDeviations from Colab's CPU runtime:")
        print("\n".join(f"  - {line}" for line in deviations))
        facts = {
            "commit": commit,
            "uncommitted_changes_left_out": dirty,
            "python": version,
            "image_build_s": img.build_s,
            "release_asset": asset_note,
            "total_s": total_s,
            "budgets": budgets,
            "not_run": skipped,
            "deviations": deviations,
        }
        saved = report.save(args.results, notebooks, facts)
        print(f"\nReport: {saved}/report.json, report.csv and the executed notebooks")
        return 1 if skipped or any(nb.failures() for nb in notebooks) else 0
    finally:
        if args.keep or args.reuse:
            print(f"Work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
