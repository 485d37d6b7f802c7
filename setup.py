"""Package metadata: ``pip install -e .`` (runtime), ``.[test]`` (pytest), ``.[flash]`` (flash-attn on CUDA)."""
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
TEST_ONLY = {"pytest"}
BENCH_ONLY = {"matplotlib", "imageio-ffmpeg"}


def requirement_name(line: str) -> str:
    """'imageio-ffmpeg>=0.5' -> 'imageio-ffmpeg'."""
    for sep in "<>=!~;[ ":
        line = line.split(sep)[0]
    return line.strip().lower()


def requirements() -> list[str]:
    """requirements.txt without comments, blank lines and test/bench-only packages."""
    lines = (ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines())
    return [ln for ln in lines if ln and requirement_name(ln) not in TEST_ONLY | BENCH_ONLY]


def pinned(names: set[str]) -> list[str]:
    """The requirements.txt lines of ``names`` (same pins as the file)."""
    lines = (ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines())
    return [ln for ln in lines if ln and requirement_name(ln) in names]


setup(
    name="deep-forcing",
    version="0.1.0",
    description="Deep Forcing: training-free long video generation with Deep Sink and Participative Compression "
                "on Self Forcing (Wan2.1-T2V-1.3B)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["wan", "pipeline", "app", "media", "utils"],
    py_modules=["inference"],
    install_requires=requirements(),
    # the tests also exercise the benchmark's plots, so "test" includes the bench extra
    extras_require={"test": pinned(TEST_ONLY | BENCH_ONLY), "bench": pinned(BENCH_ONLY), "flash": ["flash-attn>=2.5"]},
    entry_points={"console_scripts": ["deep-forcing=inference:main"]},
)
