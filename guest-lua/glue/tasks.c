/*
 * Primitives of lua/tasks.lua (ngx.sleep, ngx.thread, ngx.location.capture):
 * each a call into wit/tasks.wit. Operations are started here and return
 * their id; the Lua side waits and collects them.
 */
#include <stdlib.h>
#include <string.h>

#include "glue.h"
#include "lauxlib.h"
#include "lua.h"
#include "sandbox.h"

/* wait_any({op, ...} [, timeout_ms]) -> op | false (timed out) | nil, err */
static int p_wait_any(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 1);
  if (n < 1 || n > 100000)
    return luaL_error(L, "wait_any: bad number of operations");
  uint32_t timeout;
  uint32_t *maybe_timeout = NULL;
  if (!lua_isnoneornil(L, 2)) {
    lua_Integer ms = luaL_checkinteger(L, 2);
    timeout = ms < 0 ? 0 : ms > 0xffffffffLL ? 0xffffffffu : (uint32_t)ms;
    maybe_timeout = &timeout;
  }
  uint32_t *ids = lua_newuserdatauv(L, sizeof(uint32_t) * (size_t)n, 0);
  for (lua_Integer i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    ids[i] = (uint32_t)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
  }
  sandbox_list_u32_t list = {ids, (size_t)n};
  sandbox_option_u32_t ready;
  sandbox_string_t err;
  if (!moonwall_sandbox_tasks_wait_any(&list, maybe_timeout, &ready, &err))
    return moonwall_push_error(L, &err);
  if (ready.is_some)
    lua_pushinteger(L, ready.val);
  else
    lua_pushboolean(L, 0);
  return 1;
}

static int p_cancel(lua_State *L) {
  moonwall_sandbox_tasks_cancel((uint32_t)luaL_checkinteger(L, 1));
  return 0;
}

/* sleep(ms) -> op | nil, err */
static int p_sleep(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  uint32_t op;
  sandbox_string_t err;
  if (!moonwall_sandbox_tasks_sleep(ms < 0 ? 0 : ms > 0xffffffffLL ? 0xffffffffu : (uint32_t)ms, &op, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, op);
  return 1;
}

static int p_finish_sleep(lua_State *L) {
  sandbox_string_t err;
  if (!moonwall_sandbox_tasks_finish_sleep((uint32_t)luaL_checkinteger(L, 1), &err))
    return moonwall_push_error(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

/* capture(method, uri, args, {name, value, ...}, body) -> op | nil, err */
static int p_capture(lua_State *L) {
  moonwall_sandbox_tasks_subrequest_t request;
  /* Bytes the host checks (UTF-8 included), borrowed from the stack. */
  request.method = moonwall_borrowed_bytes(L, 1);
  request.uri = moonwall_borrowed_bytes(L, 2);
  request.args = moonwall_borrowed_bytes(L, 3);
  luaL_checktype(L, 4, LUA_TTABLE);
  request.body = moonwall_borrowed_bytes(L, 5);
  lua_Integer n = luaL_len(L, 4);
  if (n < 0 || n % 2 != 0 || n > 2000)
    return luaL_error(L, "capture: too many headers");
  moonwall_push_header_block(L, 4, (size_t)n / 2, "capture: ");
  request.headers = moonwall_borrowed_bytes(L, -1);
  uint32_t op;
  sandbox_string_t err;
  if (!moonwall_sandbox_tasks_capture(&request, &op, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, op);
  return 1;
}

/* finish_capture(op) -> {status, header = {...}, body, truncated} | nil, err */
static int p_finish_capture(lua_State *L) {
  moonwall_sandbox_tasks_subresponse_t response;
  sandbox_string_t err;
  if (!moonwall_sandbox_tasks_finish_capture((uint32_t)luaL_checkinteger(L, 1), &response, &err))
    return moonwall_push_error(L, &err);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, response.status);
  lua_setfield(L, -2, "status");
  lua_createtable(L, (int)(response.headers.len * 2), 0);
  for (size_t i = 0; i < response.headers.len; i++) {
    lua_pushlstring(L, (const char *)response.headers.ptr[i].f0.ptr, response.headers.ptr[i].f0.len);
    lua_rawseti(L, -2, (lua_Integer)(2 * i + 1));
    lua_pushlstring(L, (const char *)response.headers.ptr[i].f1.ptr, response.headers.ptr[i].f1.len);
    lua_rawseti(L, -2, (lua_Integer)(2 * i + 2));
  }
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, (const char *)response.body.ptr, response.body.len);
  lua_setfield(L, -2, "body");
  lua_pushboolean(L, response.truncated);
  lua_setfield(L, -2, "truncated");
  moonwall_sandbox_tasks_subresponse_free(&response);
  return 1;
}

int moonwall_open_tasks(lua_State *L) {
  static const luaL_Reg primitives[] = {
      {"wait_any", p_wait_any},
      {"cancel", p_cancel},
      {"sleep", p_sleep},
      {"finish_sleep", p_finish_sleep},
      {"capture", p_capture},
      {"finish_capture", p_finish_capture},
      {NULL, NULL},
  };
  luaL_newlib(L, primitives);
  return 1;
}
