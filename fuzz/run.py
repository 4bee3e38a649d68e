#!/usr/bin/env python3
"""Run one fuzz target under atheris (libFuzzer), coverage-guided.

    python fuzz/run.py TARGET [CORPUS_DIR ...] [libFuzzer flags]
    python fuzz/run.py ipfix -max_total_time=3600 -rss_limit_mb=2048 -timeout=10
    python fuzz/run.py --list

The corpus defaults to ``fuzz/corpus/TARGET`` (created and seeded from :mod:`fuzz.seeds` when empty; it is
not committed); ``fuzz/dicts/TARGET.dict``, when present, is passed as ``-dict``. A crash (an exception escaping
the target, a hang over ``-timeout`` seconds, memory over ``-rss_limit_mb``) stops the run with exit status 1 and
saves the input as ``crash-*``/``timeout-*``/``oom-*`` (``-artifact_prefix`` chooses where); copy it to
``tests/hardening/crashers/TARGET/`` to keep it as a regression test. See docs/hardening.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def kernel_modules() -> list[str]:
    """The project's modules that define numba kernels (found by their ``@njit``, so a new one is never missed)."""
    root = Path(__file__).resolve().parents[1]
    return sorted(".".join(p.relative_to(root).with_suffix("").parts)
                  for package in ("decoders", "mediation", "collector", "rating")
                  for p in (root / package).rglob("*.py") if "@njit" in p.read_text())


def main(argv: list[str]) -> None:
    from fuzz.targets import TARGETS

    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(__doc__)
        print("targets:", " ".join(TARGETS))
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in TARGETS and os.environ.get("FLOWMED_FUZZ_TARGET") in TARGETS:
        # a child that libFuzzer started for -jobs/-workers: it passes only its own flags
        name, rest = os.environ["FLOWMED_FUZZ_TARGET"], argv
    if name not in TARGETS:
        sys.exit(f"unknown target {name!r}; one of: {', '.join(TARGETS)}")
    import atheris

    # Instrument the project's code only (the decoders and parsers under test, and what they call of ours). Not the
    # numba kernels: numba compiles the function's bytecode, and atheris's inserted calls are not numba code.
    with atheris.instrument_imports(include=["decoders", "mediation", "collector", "rating", "fuzz"],
                                    exclude=kernel_modules()):
        # Import what the targets import lazily, inside the instrumentation.
        import collector.commands.core  # noqa: F401
        import collector.config  # noqa: F401
        import decoders.ipdr.framing  # noqa: F401
        import decoders.ipdr.messages  # noqa: F401
        import decoders.ipdr.session  # noqa: F401
        import decoders.ipdr.xdr  # noqa: F401
        import decoders.netflow.decoder  # noqa: F401
        import decoders.netflow.kernel as netflow_kernel
        import fuzz.targets as targets
        import mediation.subscribers.radius  # noqa: F401
        import rating.plans  # noqa: F401
        from fuzz.seeds import write_seeds
    target = targets.TARGETS[name]
    dirs = [a for a in rest if not a.startswith("-")]
    flags = [a for a in rest if a.startswith("-")]
    if not dirs:
        corpus = ROOT / "fuzz" / "corpus" / name
        if not corpus.is_dir() or not any(corpus.iterdir()):
            write_seeds(name, corpus)
        dirs = [str(corpus)]
    dictionary = ROOT / "fuzz" / "dicts" / f"{name}.dict"
    if dictionary.is_file() and not any(f.startswith("-dict=") for f in flags):
        flags.append(f"-dict={dictionary}")  # tokens of the format: the fuzzer combines them instead of guessing them
    os.environ["FLOWMED_FUZZ_TARGET"] = name  # for the children of -jobs/-workers (they re-run this script)
    netflow_kernel.warm_up()  # compile (or load) the gather kernels before the first input, not during it
    target(b"")  # warm up lazy imports and caches outside the timed runs
    atheris.Setup([sys.argv[0], *flags, *dirs], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
