// Runs before the first paint (a classic script in <head>) so a chosen theme does not flash.
// Without a stored choice the page follows the system's prefers-color-scheme. The choice is
// one per browser for every page of the site (dashboard, portal, link pages).
try {
  const theme = window.localStorage.getItem("billing-theme");
  if (theme === "dark" || theme === "light") {
    document.documentElement.dataset.theme = theme;
  }
} catch {
  // Storage can be blocked (private modes); the system setting still applies.
}
