"""Headless chromium under selenium for scripts/ui-check and scripts/bench-ui."""
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def chromium(width=1280, height=800, cold=True):
    """Debian's chromium through chromium-driver; `cold`: no HTTP cache, so that every
    load is a first visit and its weight counts every byte."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}",
              "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-sync",
              "--disable-component-update", "--disable-default-apps", "--metrics-recording-only"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_window_size(width, height)
    if cold:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    return driver


def page_metrics(driver):
    """The current page's weight (body bytes of the dashboard's files and of the API's
    answers; the /events stream excluded) and its times: first contentful paint, and the
    dashboard's own mark when the page showed its data (charts included)."""
    return driver.execute_script("""
      const nav = performance.getEntriesByType('navigation')[0];
      const res = performance.getEntriesByType('resource');
      const fcp = performance.getEntriesByType('paint').find(p => p.name === 'first-contentful-paint');
      const marks = performance.getEntriesByName('sandpit:page'), page = marks[marks.length - 1];
      const kinds = {};
      for (const r of [nav, ...res]) {
        const u = new URL(r.name);
        if (u.pathname === '/events') continue;
        const kind = u.pathname.startsWith('/ui') || u.pathname === '/' ? 'static' : 'api';
        kinds[kind] = (kinds[kind] || 0) + r.encodedBodySize;
      }
      return {static_bytes: kinds.static || 0, api_bytes: kinds.api || 0,
              first_contentful_paint_ms: fcp ? fcp.startTime : null,
              page_rendered_ms: page ? page.startTime : null,
              dom_content_loaded_ms: nav.domContentLoadedEventEnd};""")


def has_first_paint(driver):
    return driver.execute_script("return performance.getEntriesByType('paint').some(p => p.name === 'first-contentful-paint')")
