"""The explorer lessons (nbs/11_explore, 11a_teacher_view, 11b_live) in a real browser: JupyterLab driven by
Playwright in Debian's chromium.

Starts one JupyterLab on 127.0.0.1 with a random free port and token on copies of the notebooks; each test opens
one, runs all its cells from the Run menu, then works a widget as a person would: drags the σ slider of the noise
view and switches the mask view to MaskDiT (11), drags the σ_T slider of the teacher view and checks that the
teacher's picture changed and the student's did not (11a), and trains the live widget for 20 steps and checks that
its picture was redrawn as it went (11b). Screenshots go to test-artifacts/. Skips only when chromium or playwright
is missing, and fails instead when CI_REQUIRE_BROWSER=1.
"""
import contextlib, io, json, os, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ('11_explore', '11a_teacher_view', '11b_live')
ARTIFACTS = ROOT / 'test-artifacts'
CHROMIUM = os.environ.get('SDDIT_CHROMIUM', '/usr/bin/chromium')   # another Chromium-family binary: set this
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']
SKIP_FLAGS = ('slow', 'cuda', 'browser', 'notest')   # cells nbdev_test skips by default are left out here too
RUN_ALL_TIMEOUT = 900                                  # s: kernel start + every cell on a slow, shared CPU


def _missing() -> list:
    out = []
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        out.append(f"no chromium at {CHROMIUM} (apt-get install -y chromium, or point SDDIT_CHROMIUM at one)")
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


def _copy_notebook(src: Path, dst: Path):
    "A lesson without the cells nbdev_test skips (`#| slow` …), so the browser runs what the default tests run."
    nb = json.loads(src.read_text())
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


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "A JupyterLab server on 127.0.0.1:<random port> with a random token, shared by the tests; stopped by its PID."
    tmp_path = tmp_path_factory.mktemp('lab')
    work = tmp_path / 'work'
    work.mkdir()
    for name in NOTEBOOKS: _copy_notebook(ROOT / 'nbs' / f'{name}.ipynb', work / f'{name}.ipynb')
    _write_lab_settings(tmp_path / 'lab-settings')
    port, token = _free_port(), secrets.token_hex(24)
    env = {**os.environ, 'JUPYTERLAB_SETTINGS_DIR': str(tmp_path / 'lab-settings'),
           'JUPYTERLAB_WORKSPACES_DIR': str(tmp_path / 'lab-workspaces'), 'JUPYTER_CONFIG_DIR': str(tmp_path / 'jupyter-config'),
           'JUPYTER_RUNTIME_DIR': str(tmp_path / 'jupyter-runtime'), 'HF_HUB_OFFLINE': '1', 'PYTHONUNBUFFERED': '1',
           'PATH': f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",   # the kernel is this Python
           'PYTHONPATH': os.pathsep.join(filter(None, (str(ROOT), os.environ.get('PYTHONPATH'))))}   # and this sddit
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
        yield dict(base=base, token=token, log=tmp_path / 'jupyterlab.log')
    finally:
        _shut_kernels(base, token)                                  # the kernels, then the server by its PID
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try: proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL); proc.wait(timeout=30)
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(tmp_path / 'jupyterlab.log', ARTIFACTS / 'jupyterlab.log')


def _shut_kernels(base: str, token: str):
    try:
        for k in _api(f'{base}/api/kernels?token={token}') or []:
            _api(f"{base}/api/kernels/{k['id']}?token={token}", method='DELETE', timeout=30)
    except Exception:
        pass


# The notebook's state from the JupyterLab app (exposed with --LabApp.expose_app_in_browser).
_NOTEBOOK_STATE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!w || !w.content || !w.content.model || !w.sessionContext) return null;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const cells = w.content.model.cells, out = {kernel: kernel ? kernel.status : 'none', code: 0, done: 0, errors: [],
                                              path: w.context.path};
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


def _changed(a, b, x0: float = 0.0, x1: float = 1.0, y0: float = 0.0) -> float:
    "The fraction of pixels that differ between two screenshots, within columns x0…x1 and rows y0…1 (fractions)."
    assert a.shape == b.shape, (a.shape, b.shape)
    H, W = a.shape[:2]
    a, b = a[int(y0 * H):, int(x0 * W):int(x1 * W)], b[int(y0 * H):, int(x0 * W):int(x1 * W)]
    return float((abs(a - b).sum(-1) > 30).mean())


@contextlib.contextmanager
def _lesson(lab, name: str):
    "A chromium page with lesson `name` open in JupyterLab and all its cells run (Run ▸ Run All Cells, as a person)."
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={'width': 1500, 'height': 1100})
        page.set_default_timeout(180_000)
        try:
            page.goto(f"{lab['base']}/lab/workspaces/{name}/tree/{name}.ipynb?reset&token={lab['token']}")
            page.locator('.jp-NotebookPanel:not(.lm-mod-hidden)').first.wait_for(state='visible')
            dialog = page.locator('.jp-Dialog')                                         # "Select Kernel", should it ask
            try: dialog.wait_for(state='visible', timeout=5_000)
            except Exception: pass
            else: dialog.locator('.jp-mod-accept').first.click()
            _wait_state(page, lambda s: s['kernel'] == 'idle' and s['path'] == f'{name}.ipynb', 300,
                        f'the kernel of {name}.ipynb to start and be idle')
            page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
            page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()
            st = _wait_state(page, lambda s: s['done'] == s['code'] and s['kernel'] == 'idle', RUN_ALL_TIMEOUT,
                             'all cells to run')
            assert st['code'] > 8
            yield page
        except Exception:
            page.screenshot(path=str(ARTIFACTS / f'{name}-failure.png'), full_page=True)
            raise
        finally:
            browser.close()
            _shut_kernels(lab['base'], lab['token'])                   # the next lesson gets the CPU to itself


def _drag(page, slider, fraction: float):
    "Drag a slider's handle to `fraction` of its track, as a mouse would."
    handle, track = slider.locator('.noUi-handle'), slider.locator('.noUi-target')
    h, t = handle.bounding_box(), track.bounding_box()
    page.mouse.move(h['x'] + h['width'] / 2, h['y'] + h['height'] / 2)
    page.mouse.down()
    page.mouse.move(t['x'] + fraction * t['width'], h['y'] + h['height'] / 2, steps=20)
    page.mouse.up()


def _loaded(page, image):
    page.wait_for_function('img => img.complete && img.naturalWidth > 100', arg=image.element_handle())


def _redrawn(page, image, src):
    page.wait_for_function('([img, src]) => img.src !== src && img.complete && img.naturalWidth > 100',
                           arg=[image.element_handle(), src], timeout=180_000)


def test_sigma_slider_redraws_the_noise_view(browser_ready, lab):
    with _lesson(lab, '11_explore') as page:
        slider, image = page.locator('.sddit-noise-sigma'), page.locator('img.sddit-noise-image')
        readout = slider.locator('.widget-readout')
        slider.wait_for(state='visible'); image.wait_for(state='visible')
        _loaded(page, image)
        image.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / 'explore-noise-before.png'))
        before_src, before_png, before_readout = image.get_attribute('src'), image.screenshot(
            path=str(ARTIFACTS / 'noise-view-before.png')), readout.inner_text()
        assert float(before_readout) == pytest.approx(0.5, rel=0.05)

        _drag(page, slider, 0.9)                                                   # σ to 90 % of its log range
        _redrawn(page, image, before_src)
        after_readout = readout.inner_text()
        assert float(after_readout) > 5, f'σ went from {before_readout} to {after_readout}, expected ≈ 27'
        after_png = image.screenshot(path=str(ARTIFACTS / 'noise-view-after.png'))
        page.screenshot(path=str(ARTIFACTS / 'explore-noise-after.png'))
        changed = _changed(_pixels(before_png), _pixels(after_png))
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
        for view in ('sampler', 'gallery', 'compare'):
            page.locator(f'img.sddit-{view}-image').scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / f'explore-{view}.png'))


def test_sigma_t_slider_changes_the_teacher_view(browser_ready, lab):
    with _lesson(lab, '11a_teacher_view') as page:
        slider, image = page.locator('.sddit-teacher-sigma_t'), page.locator('img.sddit-teacher-image')
        readout = slider.locator('.widget-readout')
        slider.wait_for(state='visible'); image.wait_for(state='visible')
        _loaded(page, image)
        image.scroll_into_view_if_needed()
        before_src, before_readout = image.get_attribute('src'), readout.inner_text()
        before_png = image.screenshot(path=str(ARTIFACTS / 'teacher-view-before.png'))
        assert float(before_readout) == pytest.approx(0.002, rel=0.05)              # the paper's σ_T = σ_min

        _drag(page, slider, 0.6)                                                   # σ_T to ≈ 1, the student's σ_S
        _redrawn(page, image, before_src)
        after_readout = readout.inner_text()
        assert 0.1 < float(after_readout) < 10, f'σ_T went from {before_readout} to {after_readout}, expected ≈ 1'
        after_png = image.screenshot(path=str(ARTIFACTS / 'teacher-view-after.png'))
        page.screenshot(path=str(ARTIFACTS / 'teacher-view-page.png'))
        a, b = _pixels(before_png), _pixels(after_png)
        teacher = _changed(a, b, 0.02, 0.11, y0=0.25)                              # the teacher's x_σT panel
        student = _changed(a, b, 0.15, 0.35, y0=0.25)                              # the student's two panels
        bars = _changed(a, b, 0.60, 1.0, y0=0.25)                                  # P_T against P_S
        assert teacher > 0.1, f'only {teacher:.2%} of the teacher panel changed after moving σ_T'
        assert student < 0.01, f'{student:.2%} of the student panels changed, but σ_T is the teacher\'s'
        assert bars > 0.02, f'only {bars:.2%} of the distributions changed after moving σ_T'
        _wait_state(page, lambda s: s['kernel'] == 'idle', 120, 'the kernel after the redraw')


_WATCH_SRC = """img => { window.__sdditSrcs = [];
  new MutationObserver(() => window.__sdditSrcs.push(img.src)).observe(img, {attributes: true, attributeFilter: ['src']}); }"""


def test_live_training_widget_updates_its_plot(browser_ready, lab):
    with _lesson(lab, '11b_live') as page:
        box, image = page.locator('.sddit-train').last, page.locator('img.sddit-train-image').last
        status = box.locator('.sddit-train-status')
        image.wait_for(state='visible')
        _loaded(page, image)
        assert 'press Train' in status.inner_text()
        for key, value in (('steps', '20'), ('every', '10')):                      # 20 steps, a redraw every 10
            field = box.locator(f'.sddit-train-{key} input')
            field.fill(value)
            field.press('Enter')
        box.locator('.sddit-train-batch_size select').select_option('16')
        image.scroll_into_view_if_needed()
        before_png = image.screenshot(path=str(ARTIFACTS / 'live-before.png'))
        page.evaluate(_WATCH_SRC, image.element_handle())
        t0 = time.time()
        box.locator('button.sddit-train-button').click()
        page.wait_for_function('el => el.innerText.includes("done: 20 steps")', arg=status.element_handle(),
                               timeout=300_000)
        seconds = time.time() - t0
        srcs = page.evaluate('window.__sdditSrcs')
        assert len(set(srcs)) >= 2, f'the picture was redrawn {len(set(srcs))} time(s) in 20 steps, expected 2'
        _loaded(page, image)
        after_png = image.screenshot(path=str(ARTIFACTS / 'live-after.png'))
        page.screenshot(path=str(ARTIFACTS / 'live-page.png'))
        curves = _changed(_pixels(before_png), _pixels(after_png), 0.0, 0.7, y0=0.1)
        assert curves > 0.01, f'only {curves:.2%} of the curves changed after training'
        assert not box.locator('button.sddit-train-button').is_disabled()         # ready for the next run
        print(f'20 live steps and 2 redraws in the browser: {seconds:.1f} s')
