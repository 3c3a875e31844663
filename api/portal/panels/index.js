// The portal's panels, in the order of its navigation. Each panel is a module of its own,
// so a feature that lands later adds its panel without touching the others:
//
//   // panels/keys.js
//   export default {
//     id: "keys",                  // its address: #/keys, and its navigation entry
//     title: "API keys",           // the navigation's label
//     async render(ctx) { ... },   // fills ctx.root; starts with an <h1>
//     routes: [[/^\/keys\/(\d+)$/, renderOne]],  // optional pages of its own (#/keys/42)
//   };
//
// then one import and one entry below. `ctx` holds `root`, `params` (a route's groups),
// `api` (get/post/put with the signed-in user's token) and `API` (the user-management
// prefix), `me` (the profile) and `refreshMe()`, `config` (/account/config.json: how
// purchases are paid here), `handleError(err, node)` (a 401 goes back to sign-in),
// `onLeave(fn)` (stop timers when the page changes), `navigate(path)`, `signedOut(text)`.
// Files in this folder are served (api/routes/portal.py) and shipped (pyproject's
// package-data) without further listing.

import activity from "./activity.js";
import credits from "./credits.js";
import keys from "./keys.js";
import profile from "./profile.js";
import subscription from "./subscription.js";
import topup from "./topup.js";

export default [credits, topup, subscription, activity, keys, profile];
