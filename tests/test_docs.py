"""The docs site: builds with warnings as errors, renders the API reference and the executed
notebooks with their figures, and a headless browser shows both.

The browser check needs Debian's ``chromium`` (``.ci/run`` installs it). Without it the
check is skipped, except under CI (``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")
pytest.importorskip("mkdocs_jupyter")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-6000:]}"
    return out


def _png_images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_api_reference_renders_docstrings(site):
    html = (site / "api" / "estimators.html").read_text()
    for name in ("frobenius_optimal", "kl_optimal", "shampoo_squared", "kfac"):
        assert f'id="precond_lab.estimators.{name}"' in html, f"no API entry for {name}"
    # Google-style sections are parsed into tables, not shown as raw text
    assert "doc-section-title" in html or "Parameters:" in html
    assert "Args:" not in html


def test_sphinx_roles_are_not_left_in_docstrings(site):
    pages = list((site / "api").glob("*.html"))
    leftovers = {
        p.name: sorted(set(re.findall(r":(?:func|class|mod|data|meth|attr|exc):", p.read_text())))
        for p in pages
    }
    leftovers = {k: v for k, v in leftovers.items() if v}
    assert not leftovers, f"unrendered Sphinx roles on API pages: {leftovers}"


def test_notebooks_are_executed_with_figures(site):
    html = (site / "notebooks" / "01_quickstart.html").read_text()
    images = _png_images(html)
    assert images, "the quickstart page shows no figure"
    assert all(img.startswith(b"\x89PNG") and len(img) > 2000 for img in images)


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _dump_dom(browser: str, page: Path) -> str:
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_browser_renders_index_api_and_notebook(site, tmp_path):
    browser = _browser()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs Debian's chromium for the docs browser test (.ci/run has it)")
        pytest.skip("no chromium here (apt-get install chromium)")
    index = _dump_dom(browser, site / "index.html")
    assert "precond_lab" in index and 'href="api/index.html"' in index
    api = _dump_dom(browser, site / "api" / "estimators.html")
    assert "frobenius_optimal" in api and "doc-heading" in api
    nb = _dump_dom(browser, site / "notebooks" / "01_quickstart.html")
    assert "Quickstart" in nb and _png_images(nb), "notebook page without its figures in the DOM"
    shot = tmp_path / "nb.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1200,3000",
            f"--screenshot={shot}",
            (site / "notebooks" / "01_quickstart.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 3000 and pixels[..., :3].std() > 0.05, "blank screenshot"


def test_notebook_pages_hide_the_build_machine_paths():
    """Executed notebook cells printed paths of the machine that built the site."""
    sys.path.insert(0, str(ROOT / "docs" / "_hooks"))
    try:
        import notebooks as hook
    finally:
        sys.path.pop(0)
    import sysconfig
    import tempfile

    site_packages = sysconfig.get_paths()["purelib"]
    html = (
        f"<pre>{ROOT}/precond_lab/capture/layout.py:12: LayoutWarning: …\n"
        f"{site_packages}/jax/_src/x.py:3: UserWarning\n"
        f"saved to {tempfile.gettempdir()}/tmpab12/hidden_grads.npy</pre>"
    )
    out = hook.scrub_paths(html)
    assert str(ROOT) not in out and site_packages not in out
    assert "<repo>/precond_lab/capture/layout.py:12" in out
    assert "<site-packages>/jax/_src/x.py" in out and "<tmp>/tmpab12/hidden_grads.npy" in out
    # only whole path components: the repo root is not replaced inside a longer name
    assert "<repo>" not in hook.scrub_paths(f"{ROOT}x/y")


def test_search_works_from_file_urls(site):
    """mkdocs' search fetches search_index.json, which a browser refuses from file://; the
    offline plugin ships the index as a script and runs the search worker in an iframe."""
    assert (site / "search" / "search_index.js").read_text().startswith("var __index = {")
    html = (site / "index.html").read_text()
    assert "assets/iframe-worker/shim.js" in html  # the vendored shim, no network needed
    assert "unpkg.com" not in html and "://" not in html.split("iframe-worker")[0][-80:]
    assert (site / "assets" / "iframe-worker" / "shim.js").stat().st_size > 500


def test_no_build_path_in_notebook_pages(site):
    """A tqdm warning printed during execution showed the builder's site-packages path."""
    import sysconfig

    for page in sorted((site / "notebooks").glob("*.html")):
        html = page.read_text()
        assert str(ROOT) not in html, page.name
        assert "IProgress not found" not in html, page.name  # tqdm's widget warning
        assert sysconfig.get_paths()["purelib"] not in html, page.name


def test_estimators_page_opens_with_the_estimators(site):
    """The estimators' API page shows the estimators before the registry's internals."""
    import re

    html = (site / "api" / "estimators.html").read_text()
    ids = re.findall(r'id="precond_lab\.estimators\.(\w+)"', html)
    assert ids and ids[0] in {"frobenius_optimal", "power_iteration", "bregman_optimal"}, ids[:3]
    assert ids.index("ESTIMATORS") > ids.index("kl_optimal")
