// The dashboard's API client: the shared one (/ui/api.js) with the admin's own session.

import { createClient } from "/ui/api.js";

export { ApiError } from "/ui/api.js";
export const ADMIN = "/api/user-management/admin";

const client = createClient("billing-admin-session");
export const { login, logout, hasSession, get, post, getBlob } = client;
