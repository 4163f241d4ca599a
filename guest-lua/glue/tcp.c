/*
 * Primitives of lua/ngx_socket.lua (ngx.socket.tcp; resty.http is Lua over
 * it): each a call into wit/tcp.wit. I/O functions start an operation and
 * return its id; the Lua side waits for it (moonwall.tasks) and collects it
 * with the matching finish_*. The host checks everything (destinations,
 * addresses, bounds); this file only converts values.
 */
#include <stdint.h>
#include <string.h>

#include "glue.h"
#include "lauxlib.h"
#include "lua.h"
#include "sandbox.h"

/* An optional timeout in milliseconds: NULL for none; clamped to u32. */
static uint32_t *opt_timeout(lua_State *L, int index, uint32_t *slot) {
  if (lua_isnoneornil(L, index))
    return NULL;
  lua_Integer ms = luaL_checkinteger(L, index);
  *slot = ms < 0 ? 0 : ms > 0xffffffffLL ? 0xffffffffu : (uint32_t)ms;
  return slot;
}

static int push_op(lua_State *L, bool ok, uint32_t op, sandbox_string_t *err) {
  if (!ok)
    return moonwall_push_error(L, err);
  lua_pushinteger(L, op);
  return 1;
}

/* open() -> id | nil, err */
static int p_open(lua_State *L) {
  uint32_t id;
  sandbox_string_t err;
  return push_op(L, moonwall_sandbox_tcp_open(&id, &err), id, &err);
}

/* close(id) */
static int p_close(lua_State *L) {
  moonwall_sandbox_tcp_close(moonwall_check_id(L, 1));
  return 0;
}

/* connect(id, host, port, pool?, timeout_ms?) -> op | nil, err */
static int p_connect(lua_State *L) {
  uint32_t id = moonwall_check_id(L, 1);
  sandbox_list_u8_t host = moonwall_borrowed_bytes(L, 2);
  lua_Integer port = luaL_checkinteger(L, 3);
  luaL_argcheck(L, port >= 0 && port <= 65535, 3, "bad port");
  sandbox_list_u8_t pool;
  sandbox_list_u8_t *maybe_pool = NULL;
  if (!lua_isnoneornil(L, 4)) {
    pool = moonwall_borrowed_bytes(L, 4);
    maybe_pool = &pool;
  }
  uint32_t timeout;
  uint32_t *maybe_timeout = opt_timeout(L, 5, &timeout);
  uint32_t op;
  sandbox_string_t err;
  bool ok = moonwall_sandbox_tcp_connect(id, &host, (uint16_t)port, maybe_pool, maybe_timeout, &op,
                                         &err);
  return push_op(L, ok, op, &err);
}

/* finish_connect(op) -> reused_times | nil, err */
static int p_finish_connect(lua_State *L) {
  uint32_t reused;
  sandbox_string_t err;
  if (!moonwall_sandbox_tcp_finish_connect(moonwall_check_id(L, 1), &reused, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, reused);
  return 1;
}

/* send(id, data, timeout_ms?) -> op | nil, err */
static int p_send(lua_State *L) {
  uint32_t id = moonwall_check_id(L, 1);
  sandbox_list_u8_t data = moonwall_borrowed_bytes(L, 2);
  uint32_t timeout;
  uint32_t *maybe_timeout = opt_timeout(L, 3, &timeout);
  uint32_t op;
  sandbox_string_t err;
  bool ok = moonwall_sandbox_tcp_send(id, &data, maybe_timeout, &op, &err);
  return push_op(L, ok, op, &err);
}

/* finish_send(op) -> bytes | nil, err */
static int p_finish_send(lua_State *L) {
  uint64_t sent;
  sandbox_string_t err;
  if (!moonwall_sandbox_tcp_finish_send(moonwall_check_id(L, 1), &sent, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, (lua_Integer)sent);
  return 1;
}

/* receive(id, "l" | "a" | n, timeout_ms?) -> op | nil, err */
static int p_receive(lua_State *L) {
  uint32_t id = moonwall_check_id(L, 1);
  moonwall_sandbox_tcp_receive_pattern_t pattern;
  memset(&pattern, 0, sizeof pattern);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0, 2, "bad size");
    pattern.tag = MOONWALL_SANDBOX_TCP_RECEIVE_PATTERN_BYTES;
    pattern.val.bytes = (uint64_t)n;
  } else {
    const char *kind = luaL_checkstring(L, 2);
    if (strcmp(kind, "l") == 0)
      pattern.tag = MOONWALL_SANDBOX_TCP_RECEIVE_PATTERN_LINE;
    else if (strcmp(kind, "a") == 0)
      pattern.tag = MOONWALL_SANDBOX_TCP_RECEIVE_PATTERN_ALL;
    else
      return luaL_argerror(L, 2, "bad pattern");
  }
  uint32_t timeout;
  uint32_t *maybe_timeout = opt_timeout(L, 3, &timeout);
  uint32_t op;
  sandbox_string_t err;
  bool ok = moonwall_sandbox_tcp_receive(id, &pattern, maybe_timeout, &op, &err);
  return push_op(L, ok, op, &err);
}

/* receive_until(id, pattern, inclusive, max?, timeout_ms?) -> op | nil, err */
static int p_receive_until(lua_State *L) {
  uint32_t id = moonwall_check_id(L, 1);
  moonwall_sandbox_tcp_receive_pattern_t pattern;
  memset(&pattern, 0, sizeof pattern);
  pattern.tag = MOONWALL_SANDBOX_TCP_RECEIVE_PATTERN_UNTIL;
  pattern.val.until.pattern = moonwall_borrowed_bytes(L, 2);
  pattern.val.until.inclusive = lua_toboolean(L, 3);
  if (!lua_isnoneornil(L, 4)) {
    lua_Integer max = luaL_checkinteger(L, 4);
    luaL_argcheck(L, max >= 0, 4, "bad size");
    pattern.val.until.max.is_some = true;
    pattern.val.until.max.val = (uint64_t)max;
  }
  uint32_t timeout;
  uint32_t *maybe_timeout = opt_timeout(L, 5, &timeout);
  uint32_t op;
  sandbox_string_t err;
  bool ok = moonwall_sandbox_tcp_receive(id, &pattern, maybe_timeout, &op, &err);
  return push_op(L, ok, op, &err);
}

/* finish_receive(op) -> data, found | nil, err, partial */
static int p_finish_receive(lua_State *L) {
  moonwall_sandbox_tcp_received_t received;
  moonwall_sandbox_tcp_receive_error_t err;
  if (!moonwall_sandbox_tcp_finish_receive(moonwall_check_id(L, 1), &received, &err)) {
    lua_pushnil(L);
    lua_pushlstring(L, (const char *)err.message.ptr, err.message.len);
    lua_pushlstring(L, (const char *)err.partial.ptr, err.partial.len);
    moonwall_sandbox_tcp_receive_error_free(&err);
    return 3;
  }
  lua_pushlstring(L, (const char *)received.data.ptr, received.data.len);
  lua_pushboolean(L, received.found);
  moonwall_sandbox_tcp_received_free(&received);
  return 2;
}

/* sslhandshake(id, server_name?, verify, timeout_ms?) -> op | nil, err */
static int p_sslhandshake(lua_State *L) {
  uint32_t id = moonwall_check_id(L, 1);
  sandbox_list_u8_t name;
  sandbox_list_u8_t *maybe_name = NULL;
  if (!lua_isnoneornil(L, 2)) {
    name = moonwall_borrowed_bytes(L, 2);
    maybe_name = &name;
  }
  bool verify = lua_toboolean(L, 3);
  uint32_t timeout;
  uint32_t *maybe_timeout = opt_timeout(L, 4, &timeout);
  uint32_t op;
  sandbox_string_t err;
  bool ok = moonwall_sandbox_tcp_ssl_handshake(id, maybe_name, verify, maybe_timeout, &op, &err);
  return push_op(L, ok, op, &err);
}

/* finish_sslhandshake(op) -> reused_times | nil, err */
static int p_finish_sslhandshake(lua_State *L) {
  uint32_t reused;
  sandbox_string_t err;
  if (!moonwall_sandbox_tcp_finish_ssl_handshake(moonwall_check_id(L, 1), &reused, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, reused);
  return 1;
}

/* setkeepalive(id, timeout_ms?, size?) -> true | nil, err */
static int p_setkeepalive(lua_State *L) {
  uint32_t id = moonwall_check_id(L, 1);
  uint32_t timeout;
  uint32_t *maybe_timeout = opt_timeout(L, 2, &timeout);
  uint32_t size;
  uint32_t *maybe_size = opt_timeout(L, 3, &size);
  sandbox_string_t err;
  if (!moonwall_sandbox_tcp_set_keepalive(id, maybe_timeout, maybe_size, &err))
    return moonwall_push_error(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

int moonwall_open_tcp(lua_State *L) {
  static const luaL_Reg primitives[] = {
      {"open", p_open},
      {"close", p_close},
      {"connect", p_connect},
      {"finish_connect", p_finish_connect},
      {"send", p_send},
      {"finish_send", p_finish_send},
      {"receive", p_receive},
      {"receive_until", p_receive_until},
      {"finish_receive", p_finish_receive},
      {"setkeepalive", p_setkeepalive},
      {"sslhandshake", p_sslhandshake},
      {"finish_sslhandshake", p_finish_sslhandshake},
      {NULL, NULL},
  };
  luaL_newlib(L, primitives);
  return 1;
}
