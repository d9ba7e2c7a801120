"""The explorer (nbs/11_explore.ipynb) in a real browser: JupyterLab driven by Playwright in Debian's chromium.

Starts JupyterLab on 127.0.0.1 with a random free port and token on a copy of the notebook, runs all cells,
moves the σ slider with the keyboard and checks that the rendered picture changed. Screenshots go to
test-artifacts/. Skips only when chromium or playwright is missing, and fails instead when CI_REQUIRE_BROWSER=1.
"""
import io, json, os, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / 'nbs' / '11_explore.ipynb'
ARTIFACTS = ROOT / 'test-artifacts'
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']
SKIP_FLAGS = ('slow', 'cuda', 'browser', 'notest')   # cells nbdev_test skips by default are left out here too
RUN_ALL_TIMEOUT = 900                                  # s: kernel start + every cell on a slow, shared CPU


def _missing() -> list:
    out = []
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        out.append(f"Debian's chromium is not at {CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        out.append("the playwright package is missing (pip install playwright; never 'playwright install')")
    return out


@pytest.fixture(scope='module')
def browser_ready():
    missing = _missing()
    if missing:
        if os.environ.get('CI_REQUIRE_BROWSER') == '1':
            pytest.fail('CI_REQUIRE_BROWSER=1 but ' + '; '.join(missing))
        pytest.skip('; '.join(missing))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _copy_notebook(dst: Path):
    "The explorer without the cells nbdev_test skips (`#| slow` …), so the browser runs what the default tests run."
    nb = json.loads(NOTEBOOK.read_text())
    def skipped(c):
        first = ''.join(c['source']).lstrip().splitlines()[:3] if c['cell_type'] == 'code' else []
        return any(l.startswith('#|') and any(f in l.split() for f in SKIP_FLAGS) for l in first)
    nb['cells'] = [c for c in nb['cells'] if not skipped(c)]
    nb.setdefault('metadata', {})['kernelspec'] = dict(name='python3', display_name='Python 3 (ipykernel)', language='python')
    dst.write_text(json.dumps(nb))


def _write_lab_settings(d: Path):
    "No news or update pop-ups; every cell in the DOM (no windowed rendering) so widgets can be found."
    files = {'@jupyterlab/apputils-extension/notification.jupyterlab-settings': {'fetchNews': 'false', 'checkForUpdates': False},
             '@jupyterlab/notebook-extension/tracker.jupyterlab-settings': {'windowingMode': 'none'}}
    for name, value in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(json.dumps(value))


def _api(url: str, method: str = 'GET', timeout: float = 10):
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
        return json.loads(body) if body else None


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on 127.0.0.1:<random port> with a random token; stopped by its PID afterwards."
    work = tmp_path / 'work'; work.mkdir()
    _copy_notebook(work / NOTEBOOK.name)
    _write_lab_settings(tmp_path / 'lab-settings')
    port, token = _free_port(), secrets.token_hex(24)
    env = {**os.environ, 'JUPYTERLAB_SETTINGS_DIR': str(tmp_path / 'lab-settings'),
           'JUPYTERLAB_WORKSPACES_DIR': str(tmp_path / 'lab-workspaces'), 'JUPYTER_CONFIG_DIR': str(tmp_path / 'jupyter-config'),
           'JUPYTER_RUNTIME_DIR': str(tmp_path / 'jupyter-runtime'), 'HF_HUB_OFFLINE': '1', 'PYTHONUNBUFFERED': '1',
           'PATH': f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}   # the kernel is this Python
    env.pop('MPLBACKEND', None)                                     # the kernel's figures use the inline backend
    env.pop('SDDIT_CKPT', None)                                     # the explorer's random model
    log = open(tmp_path / 'jupyterlab.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root', '--ServerApp.ip=127.0.0.1',
                             f'--ServerApp.port={port}', '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}',
                             f'--ServerApp.root_dir={work}', '--LabApp.news_url=None', '--LabApp.expose_app_in_browser=True',
                             '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
                            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f'http://127.0.0.1:{port}'
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f'JupyterLab exited with {proc.returncode}:\n' + (tmp_path / 'jupyterlab.log').read_text()[-3000:])
            try:
                _api(f'{base}/api/status?token={token}'); break
            except OSError:
                if time.time() > deadline:
                    pytest.fail('JupyterLab did not answer within 120 s:\n' + (tmp_path / 'jupyterlab.log').read_text()[-3000:])
                time.sleep(0.5)
        yield dict(base=base, token=token, notebook=NOTEBOOK.name, log=tmp_path / 'jupyterlab.log')
    finally:
        try:                                                        # shut the kernels down, then the server by its PID
            for k in _api(f'{base}/api/kernels?token={token}') or []:
                _api(f"{base}/api/kernels/{k['id']}?token={token}", method='DELETE', timeout=30)
        except Exception:
            pass
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try: proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL); proc.wait(timeout=30)
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(tmp_path / 'jupyterlab.log', ARTIFACTS / 'jupyterlab.log')


# The notebook's state from the JupyterLab app (exposed with --LabApp.expose_app_in_browser).
_NOTEBOOK_STATE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!w || !w.content || !w.content.model || !w.sessionContext) return null;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const cells = w.content.model.cells, out = {kernel: kernel ? kernel.status : 'none', code: 0, done: 0, errors: []};
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    out.code += 1;
    if (c.executionCount !== null) out.done += 1;
    for (const o of c.outputs.toJSON())
      if (o.output_type === 'error') out.errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
  }
  return out;
}"""


def _wait_state(page, cond, timeout, what):
    deadline, state = time.time() + timeout, None
    while time.time() < deadline:
        state = page.evaluate(_NOTEBOOK_STATE)
        if state and state['errors']:
            raise AssertionError('a cell failed: ' + '; '.join(state['errors']))
        if state and cond(state): return state
        time.sleep(1)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}; last state {state}')


def _pixels(png: bytes):
    from PIL import Image
    import numpy as np
    return np.asarray(Image.open(io.BytesIO(png)).convert('RGB'), dtype=np.int16)


def test_sigma_slider_redraws_the_noise_view(browser_ready, lab):
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={'width': 1500, 'height': 1100})
        page.set_default_timeout(180_000)
        try:
            page.goto(f"{lab['base']}/lab/tree/{lab['notebook']}?token={lab['token']}")
            page.locator('.jp-NotebookPanel').first.wait_for(state='visible')
            dialog = page.locator('.jp-Dialog')                                         # "Select Kernel", should it ask
            try: dialog.wait_for(state='visible', timeout=5_000)
            except Exception: pass
            else: dialog.locator('.jp-mod-accept').first.click()
            _wait_state(page, lambda s: s['kernel'] == 'idle', 300, 'the kernel to start and be idle')

            page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()       # Run ▸ Run All Cells, as a person would
            page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()
            st = _wait_state(page, lambda s: s['done'] == s['code'] and s['kernel'] == 'idle', RUN_ALL_TIMEOUT,
                             'all cells to run')
            assert st['code'] > 10

            slider, image = page.locator('.sddit-noise-sigma'), page.locator('img.sddit-noise-image')
            readout = slider.locator('.widget-readout')
            slider.wait_for(state='visible'); image.wait_for(state='visible')
            page.wait_for_function('img => img.complete && img.naturalWidth > 100', arg=image.element_handle())
            image.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / 'explore-noise-before.png'))
            before_src, before_png, before_readout = image.get_attribute('src'), image.screenshot(
                path=str(ARTIFACTS / 'noise-view-before.png')), readout.inner_text()
            assert float(before_readout) == pytest.approx(0.5, rel=0.05)

            handle, track = slider.locator('.noUi-handle'), slider.locator('.noUi-target')
            h, t = handle.bounding_box(), track.bounding_box()                         # drag σ to 90 % of its log range
            page.mouse.move(h['x'] + h['width'] / 2, h['y'] + h['height'] / 2)
            page.mouse.down()
            page.mouse.move(t['x'] + 0.9 * t['width'], h['y'] + h['height'] / 2, steps=20)
            page.mouse.up()
            page.wait_for_function('([img, src]) => img.src !== src && img.complete && img.naturalWidth > 100',
                                   arg=[image.element_handle(), before_src], timeout=180_000)
            after_readout = readout.inner_text()
            assert float(after_readout) > 5, f'σ went from {before_readout} to {after_readout}, expected ≈ 27'
            after_png = image.screenshot(path=str(ARTIFACTS / 'noise-view-after.png'))
            page.screenshot(path=str(ARTIFACTS / 'explore-noise-after.png'))

            a, b = _pixels(before_png), _pixels(after_png)
            assert a.shape == b.shape
            changed = (abs(a - b).sum(-1) > 30).mean()
            assert changed > 0.05, f'only {changed:.2%} of the noise view changed after moving σ'
            _wait_state(page, lambda s: s['kernel'] == 'idle', 120, 'the kernel after the redraw')

            masks = page.locator('img.sddit-masks-image')                             # a second widget: SD-DiT → MaskDiT
            masks.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / 'explore-masks-sddit.png'))
            src = masks.get_attribute('src')
            page.locator('.sddit-masks-method button', has_text='maskdit').click()
            page.wait_for_function('([img, src]) => img.src !== src && img.complete', arg=[masks.element_handle(), src],
                                   timeout=180_000)
            page.screenshot(path=str(ARTIFACTS / 'explore-masks-maskdit.png'))
            for view in ('sampler', 'gallery'):
                page.locator(f'img.sddit-{view}-image').scroll_into_view_if_needed()
                page.screenshot(path=str(ARTIFACTS / f'explore-{view}.png'))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / 'explore-failure.png'), full_page=True)
            raise
        finally:
            browser.close()
