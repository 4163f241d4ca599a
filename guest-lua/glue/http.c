/*
 * The HTTP exports: run one request through its phases (lua/ngx.lua does the
 * work), or only the log phase. This file gives the Lua side its primitives,
 * each a call into a WIT import (wit/http.wit), and moves the request, the
 * handlers and any error across the boundary.
 */
#include <stdlib.h>
#include <string.h>

#include "embedded_lua.h"
#include <stdint.h>

#include "glue.h"
#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"
/* Lua's internals, configured as the Lua sources are (for leave_room). */
#include "moonwall_luaconf.h"
#include "lstate.h"
#include "lstring.h"
#include "sandbox.h"

typedef exports_moonwall_sandbox_http_handler_request_t request_t;
typedef exports_moonwall_sandbox_http_handler_handlers_t handlers_t;
typedef exports_moonwall_sandbox_http_handler_source_t source_t;
typedef exports_moonwall_sandbox_http_handler_phase_error_t phase_error_t;
typedef exports_moonwall_sandbox_http_handler_init_error_t init_error_t;

static sandbox_list_u8_t borrowed(const char *bytes, size_t len) {
  sandbox_list_u8_t list = {(uint8_t *)bytes, len};
  return list;
}

static void push_bytes(lua_State *L, const sandbox_list_u8_t *list) {
  lua_pushlstring(L, (const char *)list->ptr, list->len);
}

static void push_text(lua_State *L, const sandbox_string_t *text) {
  lua_pushlstring(L, (const char *)text->ptr, text->len);
}

/* Pop the list the host returned into a Lua string, and free it. */
static void push_owned(lua_State *L, sandbox_list_u8_t *list) {
  push_bytes(L, list);
  sandbox_list_u8_free(list);
}

static int return_error(lua_State *L, sandbox_string_t *err) {
  lua_pushnil(L);
  push_text(L, err);
  sandbox_string_free(err);
  return 2;
}

/* ---- primitives for ngx.lua --------------------------------------------- */

/* Add the string at the top of the stack to `b` after its length, as a u32
 * little-endian (the header block's encoding), and pop it. */
static void add_block_part(lua_State *L, luaL_Buffer *b) {
  size_t len;
  lua_tolstring(L, -1, &len);
  char prefix[4] = {(char)(len & 0xff), (char)((len >> 8) & 0xff), (char)((len >> 16) & 0xff),
                    (char)((len >> 24) & 0xff)};
  /* luaL_addvalue is the one buffer operation allowed with a value above
     the buffer: put the prefix in front of the part, then add both. */
  lua_pushlstring(L, prefix, sizeof(prefix));
  lua_insert(L, -2);
  lua_concat(L, 2);
  luaL_addvalue(b);
}

void moonwall_push_header_block(lua_State *L, int table, size_t count, const char *prefix) {
  table = lua_absindex(L, table);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (size_t i = 0; i < count; i++) {
    if (lua_geti(L, table, (lua_Integer)(2 * i + 1)) != LUA_TSTRING)
      luaL_error(L, "%sheader name is not a string", prefix);
    add_block_part(L, &b);
    if (lua_geti(L, table, (lua_Integer)(2 * i + 2)) != LUA_TSTRING)
      luaL_error(L, "%sheader value is not a string", prefix);
    add_block_part(L, &b);
  }
  luaL_pushresult(&b);
}

/* send_head(status, {name1, value1, name2, value2, ...}) -> true | nil, err */
static int p_send_head(lua_State *L) {
  lua_Integer status = luaL_checkinteger(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 2);
  if (status < 0 || status > 0xffff)
    return luaL_error(L, "invalid status %I", status);
  /* How many headers a response may have is the host's to say (and its
     message to give): caps/http.rs, MAX_RESPONSE_HEADERS. */
  if (n < 0 || n % 2 != 0)
    return luaL_error(L, "malformed response header list");
  moonwall_push_header_block(L, 2, (size_t)n / 2, "");
  /* One flat list (never a list of lists: wit/sandbox.wit). */
  sandbox_list_u8_t block = moonwall_borrowed_bytes(L, -1);
  sandbox_string_t err;
  if (!moonwall_sandbox_response_send_head((uint16_t)status, &block, &err))
    return return_error(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

/* write(bytes) -> true | nil, err */
static int p_write(lua_State *L) {
  size_t len;
  const char *bytes = luaL_checklstring(L, 1, &len);
  sandbox_list_u8_t list = borrowed(bytes, len);
  sandbox_string_t err;
  if (!moonwall_sandbox_response_write(&list, &err))
    return return_error(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

static int p_flush(lua_State *L) {
  (void)L;
  moonwall_sandbox_response_flush();
  return 0;
}

/* log(level 0-8, message) */
static int p_log(lua_State *L) {
  lua_Integer level = luaL_checkinteger(L, 1);
  size_t len;
  const char *message = luaL_checklstring(L, 2, &len);
  if (level < 0 || level > MOONWALL_SANDBOX_LOG_LEVEL_DEBUG)
    return luaL_error(L, "bad log level");
  sandbox_list_u8_t list = borrowed(message, len);
  moonwall_sandbox_log_write((moonwall_sandbox_log_level_t)level, &list);
  return 0;
}

/* where(level) -> "chunk:line: " of the Lua function `level` calls up, or "" */
static int p_where(lua_State *L) {
  int level = (int)luaL_optinteger(L, 1, 1);
  lua_Debug ar;
  if (lua_getstack(L, level, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
    lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
  else
    lua_pushliteral(L, "");
  return 1;
}

static int p_md5(lua_State *L) {
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  sandbox_list_u8_t in = borrowed(data, len), out;
  moonwall_sandbox_codec_md5(&in, &out);
  push_owned(L, &out);
  return 1;
}

static int p_sha1(lua_State *L) {
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  sandbox_list_u8_t in = borrowed(data, len), out;
  moonwall_sandbox_codec_sha1(&in, &out);
  push_owned(L, &out);
  return 1;
}

static int p_hmac_sha1(lua_State *L) {
  size_t key_len, len;
  const char *key = luaL_checklstring(L, 1, &key_len);
  const char *data = luaL_checklstring(L, 2, &len);
  sandbox_list_u8_t key_list = borrowed(key, key_len), in = borrowed(data, len), out;
  moonwall_sandbox_codec_hmac_sha1(&key_list, &in, &out);
  push_owned(L, &out);
  return 1;
}

static int p_crc32(lua_State *L) {
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  sandbox_list_u8_t in = borrowed(data, len);
  lua_pushinteger(L, (lua_Integer)moonwall_sandbox_codec_crc32(&in));
  return 1;
}

static int p_b64enc(lua_State *L) {
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  int no_padding = lua_toboolean(L, 2);
  sandbox_list_u8_t in = borrowed(data, len), out;
  moonwall_sandbox_codec_base64_encode(&in, no_padding, &out);
  push_owned(L, &out);
  return 1;
}

static int p_b64dec(lua_State *L) {
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  sandbox_list_u8_t in = borrowed(data, len), out;
  if (!moonwall_sandbox_codec_base64_decode(&in, &out)) {
    lua_pushnil(L);
    return 1;
  }
  push_owned(L, &out);
  return 1;
}

static int p_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)moonwall_sandbox_clock_wall_ns() / 1e9);
  return 1;
}

/* ---- proxied locations: wit/upstream.wit -------------------------------- */

/* proxied() -> boolean */
static int p_proxied(lua_State *L) {
  lua_pushboolean(L, moonwall_sandbox_upstream_proxied());
  return 1;
}

/* A timeout of a balancer's, in milliseconds (clamped to u32). */
static uint32_t field_ms(lua_State *L, int table, const char *field) {
  lua_getfield(L, table, field);
  lua_Integer ms = luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  return ms < 0 ? 0 : ms > 0xffffffffLL ? 0xffffffffu : (uint32_t)ms;
}

/* proxy_send(method, target, {name, value, ...}, body, peer?, {connect, send, read}?)
   -> op | nil, err */
static int p_proxy_send(lua_State *L) {
  sandbox_list_u8_t method = moonwall_borrowed_bytes(L, 1);
  sandbox_list_u8_t target = moonwall_borrowed_bytes(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  sandbox_list_u8_t body = moonwall_borrowed_bytes(L, 4);
  sandbox_list_u8_t peer;
  sandbox_list_u8_t *maybe_peer = NULL;
  if (!lua_isnoneornil(L, 5)) {
    peer = moonwall_borrowed_bytes(L, 5);
    maybe_peer = &peer;
  }
  moonwall_sandbox_upstream_timeouts_t timeouts;
  moonwall_sandbox_upstream_timeouts_t *maybe_timeouts = NULL;
  if (!lua_isnoneornil(L, 6)) {
    luaL_checktype(L, 6, LUA_TTABLE);
    timeouts.connect_ms = field_ms(L, 6, "connect");
    timeouts.send_ms = field_ms(L, 6, "send");
    timeouts.read_ms = field_ms(L, 6, "read");
    maybe_timeouts = &timeouts;
  }
  lua_Integer n = luaL_len(L, 3);
  if (n < 0 || n % 2 != 0)
    return luaL_error(L, "proxy: malformed header list");
  moonwall_push_header_block(L, 3, (size_t)n / 2, "proxy: ");
  sandbox_list_u8_t block = moonwall_borrowed_bytes(L, -1);
  uint32_t op;
  sandbox_string_t err;
  if (!moonwall_sandbox_upstream_send(&method, &target, &block, &body, maybe_peer, maybe_timeouts,
                                      &op, &err))
    return return_error(L, &err);
  lua_pushinteger(L, op);
  return 1;
}

static int push_failure(lua_State *L, moonwall_sandbox_upstream_failure_t *failure) {
  lua_pushnil(L);
  lua_pushlstring(L, (const char *)failure->message.ptr, failure->message.len);
  lua_pushinteger(L, failure->status);
  lua_pushlstring(L, (const char *)failure->addr.ptr, failure->addr.len);
  lua_pushboolean(L, failure->retry);
  moonwall_sandbox_upstream_failure_free(failure);
  return 5;
}

/* proxy_finish_send(op) -> {status, headers = {n1, v1, ...}, addr, connect_ms, header_ms}
   | nil, err, status, addr */
static int p_proxy_finish_send(lua_State *L) {
  moonwall_sandbox_upstream_head_t ok;
  moonwall_sandbox_upstream_failure_t failure;
  if (!moonwall_sandbox_upstream_finish_send(moonwall_check_id(L, 1), &ok, &failure))
    return push_failure(L, &failure);
  moonwall_sandbox_upstream_head_t *head = &ok;
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, head->status);
  lua_setfield(L, -2, "status");
  lua_createtable(L, (int)(head->headers.len * 2), 0);
  for (size_t i = 0; i < head->headers.len; i++) {
    lua_pushlstring(L, (const char *)head->headers.ptr[i].f0.ptr, head->headers.ptr[i].f0.len);
    lua_rawseti(L, -2, (lua_Integer)(2 * i + 1));
    lua_pushlstring(L, (const char *)head->headers.ptr[i].f1.ptr, head->headers.ptr[i].f1.len);
    lua_rawseti(L, -2, (lua_Integer)(2 * i + 2));
  }
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, (const char *)head->addr.ptr, head->addr.len);
  lua_setfield(L, -2, "addr");
  lua_pushinteger(L, head->connect_ms);
  lua_setfield(L, -2, "connect_ms");
  lua_pushinteger(L, head->header_ms);
  lua_setfield(L, -2, "header_ms");
  moonwall_sandbox_upstream_head_free(head);
  return 1;
}

/* proxy_read() -> op | nil, err */
static int p_proxy_read(lua_State *L) {
  uint32_t op;
  sandbox_string_t err;
  if (!moonwall_sandbox_upstream_read(&op, &err))
    return return_error(L, &err);
  lua_pushinteger(L, op);
  return 1;
}

/* proxy_finish_read(op) -> chunk | false (the end) | nil, err, status, addr */
static int p_proxy_finish_read(lua_State *L) {
  sandbox_option_list_u8_t ok;
  moonwall_sandbox_upstream_failure_t failure;
  if (!moonwall_sandbox_upstream_finish_read(moonwall_check_id(L, 1), &ok, &failure))
    return push_failure(L, &failure);
  if (!ok.is_some) {
    lua_pushboolean(L, 0);
    return 1;
  }
  sandbox_list_u8_t *chunk = &ok.val;
  lua_pushlstring(L, (const char *)chunk->ptr, chunk->len);
  sandbox_list_u8_free(chunk);
  return 1;
}

static void push_primitives(lua_State *L) {
  static const luaL_Reg primitives[] = {
      {"send_head", p_send_head}, {"write", p_write},   {"flush", p_flush},
      {"log", p_log},             {"where", p_where},   {"md5", p_md5},
      {"sha1", p_sha1},           {"hmac_sha1", p_hmac_sha1}, {"crc32", p_crc32},
      {"b64enc", p_b64enc},       {"b64dec", p_b64dec}, {"now", p_now},
      {"proxied", p_proxied},     {"proxy_send", p_proxy_send},
      {"proxy_finish_send", p_proxy_finish_send},
      {"proxy_read", p_proxy_read}, {"proxy_finish_read", p_proxy_finish_read},
      {NULL, NULL},
  };
  luaL_newlib(L, primitives);
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
}

/* ---- the request and the handlers as Lua tables ------------------------- */

static void set_text(lua_State *L, const char *field, const sandbox_string_t *text) {
  push_text(L, text);
  lua_setfield(L, -2, field);
}

static void push_request(lua_State *L, const request_t *request) {
  lua_createtable(L, 0, 15);
  set_text(L, "method", &request->method);
  push_bytes(L, &request->uri);
  lua_setfield(L, -2, "uri");
  set_text(L, "request_uri", &request->request_uri);
  set_text(L, "query", &request->query);
  set_text(L, "http_version", &request->http_version);
  set_text(L, "scheme", &request->scheme);
  set_text(L, "host", &request->host);
  lua_pushinteger(L, request->server_port);
  lua_setfield(L, -2, "server_port");
  set_text(L, "remote_addr", &request->remote_addr);
  lua_pushinteger(L, request->remote_port);
  lua_setfield(L, -2, "remote_port");
  set_text(L, "ssl_protocol", &request->ssl_protocol);
  set_text(L, "ssl_server_name", &request->ssl_server_name);
  lua_createtable(L, (int)request->headers.len, 0);
  for (size_t i = 0; i < request->headers.len; i++) {
    lua_createtable(L, 0, 2);
    set_text(L, "name", &request->headers.ptr[i].name);
    push_bytes(L, &request->headers.ptr[i].value);
    lua_setfield(L, -2, "value");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "headers");
  push_bytes(L, &request->body);
  lua_setfield(L, -2, "body");
  lua_pushnumber(L, request->start_time);
  lua_setfield(L, -2, "start_time");
}

static const char BINARY_REFUSED[] =
    "binary chunks are not allowed in the moonwall sandbox (only Lua source text is loaded)";

/* A phase handler, loaded: { name = ..., fn = the chunk } or { name = ...,
 * err = why it did not load }. Binary only when the host says the code is
 * bytecode it compiled (wit/http.wit); Lua text otherwise. Nothing runs
 * here. */
static void push_source(lua_State *L, const source_t *source) {
  lua_createtable(L, 0, 2);
  const char *name = lua_pushlstring(L, (const char *)source->name.ptr, source->name.len);
  lua_setfield(L, -2, "name"); /* the table keeps `name` alive */
  const char *code = (const char *)source->code.ptr;
  size_t len = source->code.len;
  int status;
  if (!source->binary && len > 0 && code[0] == LUA_SIGNATURE[0]) {
    lua_pushstring(L, BINARY_REFUSED);
    status = LUA_ERRSYNTAX;
  } else {
    status = luaL_loadbufferx(L, code, len, name, source->binary ? "b" : "t");
  }
  lua_setfield(L, -2, status == LUA_OK ? "fn" : "err");
}

static void push_handlers(lua_State *L, const handlers_t *handlers) {
  const struct {
    const char *phase;
    const moonwall_sandbox_http_types_option_source_t *source;
  } all[] = {
      {"rewrite", &handlers->rewrite},         {"access", &handlers->access},
      {"content", &handlers->content},         {"header_filter", &handlers->header_filter},
      {"body_filter", &handlers->body_filter}, {"log", &handlers->log},
      {"balancer", &handlers->balancer},
  };
  lua_createtable(L, 0, 6);
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
    if (all[i].source->is_some) {
      push_source(L, &all[i].source->val);
      lua_setfield(L, -2, all[i].phase);
    }
  }
}

static moonwall_sandbox_http_types_phase_t phase_of(const char *name) {
  static const char *const names[] = {"rewrite",     "access", "content",  "header_filter",
                                      "body_filter", "log",    "balancer"};
  for (int i = 0; i < 6; i++)
    if (name != NULL && strcmp(name, names[i]) == 0)
      return (moonwall_sandbox_http_types_phase_t)i;
  return MOONWALL_SANDBOX_HTTP_TYPES_PHASE_CONTENT;
}

/* ---- the exports ---------------------------------------------------------- */

struct http_call {
  const request_t *request;
  const handlers_t *handlers;  /* serve */
  const source_t *log_handler; /* log only */
  uint16_t status;             /* log only */
  phase_error_t *error;
  int failed;
};

/* Load ngx_util.lua and ngx.lua; leaves the module table on the stack. */
static void load_ngx(lua_State *L) {
  if (luaL_loadbufferx(L, moonwall_lua_ngx_util, moonwall_lua_ngx_util_len, "=ngx_util", "t") != LUA_OK)
    lua_error(L);
  lua_call(L, 0, 1);
  if (luaL_loadbufferx(L, moonwall_lua_ngx, moonwall_lua_ngx_len, "=ngx", "t") != LUA_OK)
    lua_error(L);
  lua_insert(L, -2);
  push_primitives(L);
  lua_insert(L, -2);
  lua_call(L, 2, 1);
}

/*
 * Leave room in the snapshot for what every request adds: a full collection
 * shrinks Lua's string table and the main thread's stack to fit, so each
 * request would grow them again (rehashing every interned string, copying
 * the stack) and write to the pages that takes. Grown here once, the
 * growth is in the snapshot instead.
 */
static void leave_room(lua_State *L) {
  stringtable *strings = &G(L)->strt;
  if (strings->nuse >= strings->size / 2)
    luaS_resize(L, strings->size * 2);
  lua_checkstack(L, LUAI_MAXCCALLS);
}

/*
 * Fill the free chunks that a tenant's init script's garbage left all over
 * the heap, so that a request's allocations come from fresh memory at its
 * top instead of from holes spread over the snapshot's pages (measured: a
 * hello from a state with ten modules loaded, 165 -> 80 µs). The host resets a request's
 * memory by finding the pages it wrote: writes to a few contiguous pages are
 * cheap to reset, writes scattered over many (more than the host scans for)
 * make it drop and fault in the rest. For each size, from large to small,
 * malloc takes every free chunk that fits before the top of the heap
 * (dlmalloc's order); once 256 allocations in a row come at a constant
 * stride, they come from the top, and those are given back.
 */
static void plug_heap_holes(void) {
  static const size_t sizes[] = {1000, 240, 112, 48, 24, 8};
  enum { RUN = 256, MAX_ALLOCATIONS = 1 << 20 };
  for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
    void *run[RUN];
    size_t in_run = 0;
    uintptr_t stride = 0, previous = 0;
    for (int i = 0; i < MAX_ALLOCATIONS; i++) {
      void *block = malloc(sizes[s]);
      if (block == NULL)
        break;
      uintptr_t at = (uintptr_t)block;
      if (previous != 0 && at > previous && (in_run == 0 || at - previous == stride)) {
        stride = at - previous;
        if (in_run == 0)
          run[in_run++] = (void *)previous;
        run[in_run++] = block;
      } else {
        in_run = 0;
      }
      previous = at;
      if (in_run == RUN) {
        /* From the top of the heap: give these back (they merge into it). */
        while (in_run > 0)
          free(run[--in_run]);
        break;
      }
    }
  }
}

/*
 * The state `prepare` built, with the ngx module in its registry; NULL until
 * then. A snapshot taken after `prepare` starts every request's instance with
 * it, so a request skips building the libraries and the ngx API. Each
 * instance serves one request, so this state is never shared.
 */
static lua_State *prepared_state;
static int prepared_module = LUA_NOREF;

static int prepare_protected(lua_State *L) {
  moonwall_open_stdlib(L);
  load_ngx(L);
  prepared_module = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

void exports_sandbox_prepare(void) {
  if (prepared_state != NULL)
    return;
  lua_State *L = moonwall_new_state();
  lua_pushcfunction(L, prepare_protected);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    /* Only moonwall's own code runs here; without a prepared state every
     * request builds its own. */
    lua_close(L);
    return;
  }
  /* Leave no garbage in the snapshot. (Plugging the heap's holes, as after
   * an init script, made no difference measurable here: this heap is built
   * by moonwall's own code, with little garbage.) */
  lua_gc(L, LUA_GCCOLLECT);
  leave_room(L);
  prepared_state = L;
}

/* Copy an error table ({message, traceback}) at the top of the stack out to
 * the host; a traceback that is not a string is sent empty. */
static void copy_error(lua_State *L, sandbox_list_u8_t *message, sandbox_list_u8_t *traceback) {
  lua_getfield(L, -1, "message");
  moonwall_copy_value(message, L, -1);
  lua_getfield(L, -2, "traceback");
  if (lua_type(L, -1) == LUA_TSTRING)
    moonwall_copy_value(traceback, L, -1);
  else
    moonwall_copy_out(traceback, "", 0);
  lua_pop(L, 2);
}

static int http_protected(lua_State *L) {
  struct http_call *call = lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (L == prepared_state) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, prepared_module);
    moonwall_reseed_random(L);
  } else {
    moonwall_open_stdlib(L);
    load_ngx(L);
  }
  if (call->handlers == NULL) {
    lua_getfield(L, -1, "log_only");
    push_request(L, call->request);
    push_source(L, call->log_handler);
    lua_pushinteger(L, call->status);
    lua_call(L, 3, 0);
    return 0;
  }
  lua_getfield(L, -1, "serve");
  push_request(L, call->request);
  push_handlers(L, call->handlers);
  lua_call(L, 2, 1);
  if (lua_istable(L, -1)) {
    call->failed = 1;
    lua_getfield(L, -1, "phase");
    call->error->phase = phase_of(lua_tostring(L, -1));
    lua_pop(L, 1);
    copy_error(L, &call->error->message, &call->error->traceback);
  }
  return 0;
}

static void run_http(struct http_call *call) {
  int fresh = prepared_state == NULL;
  lua_State *L = fresh ? moonwall_new_state() : prepared_state;
  lua_pushcfunction(L, http_protected);
  lua_pushlightuserdata(L, call);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    /* An error in moonwall's own Lua code, or in setting it up. */
    call->failed = 1;
    call->error->phase = MOONWALL_SANDBOX_HTTP_TYPES_PHASE_CONTENT;
    moonwall_copy_value(&call->error->message, L, -1);
    moonwall_copy_out(&call->error->traceback, "", 0);
  }
  /* A prepared state is left as it is: the instance ends with the request. */
  if (fresh)
    lua_close(L);
}

bool exports_moonwall_sandbox_http_handler_handle(request_t *request, handlers_t *handlers, phase_error_t *err) {
  struct http_call call = {request, handlers, NULL, 0, err, 0};
  run_http(&call);
  exports_moonwall_sandbox_http_handler_request_free(request);
  exports_moonwall_sandbox_http_handler_handlers_free(handlers);
  return !call.failed;
}

void exports_moonwall_sandbox_http_handler_log_only(request_t *request, source_t *log_handler, uint16_t status) {
  phase_error_t ignored;
  struct http_call call = {request, NULL, log_handler, status, &ignored, 0};
  run_http(&call);
  if (call.failed) {
    sandbox_list_u8_t message = ignored.message;
    moonwall_sandbox_log_write(MOONWALL_SANDBOX_LOG_LEVEL_ERR, &message);
  }
  exports_moonwall_sandbox_http_handler_request_free(request);
  exports_moonwall_sandbox_http_handler_source_free(log_handler);
}

/*
 * A tenant's init script, run once in the prepared state, which the host then
 * snapshots: every request of the tenant starts from what it left. The state
 * stays the prepared one (requests find it, and the ngx module, as before).
 */
struct init_call {
  const source_t *script;
  init_error_t *error;
  int failed;
};

static int init_protected(lua_State *L) {
  struct init_call *call = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, prepared_module);
  lua_getfield(L, -1, "init");
  push_source(L, call->script);
  lua_call(L, 1, 1);
  if (lua_istable(L, -1)) {
    call->failed = 1;
    copy_error(L, &call->error->message, &call->error->traceback);
  }
  return 0;
}

bool exports_moonwall_sandbox_http_handler_init(source_t *script, init_error_t *err) {
  struct init_call call = {script, err, 0};
  exports_sandbox_prepare();
  lua_State *L = prepared_state;
  if (L == NULL) {
    static const char message[] = "the sandbox could not build its prepared state";
    moonwall_copy_out(&err->message, message, sizeof(message) - 1);
    moonwall_copy_out(&err->traceback, "", 0);
    exports_moonwall_sandbox_http_handler_source_free(script);
    return false;
  }
  lua_pushcfunction(L, init_protected);
  lua_pushlightuserdata(L, &call);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    call.failed = 1;
    moonwall_copy_value(&err->message, L, -1);
    moonwall_copy_out(&err->traceback, "", 0);
    lua_pop(L, 1);
  }
  exports_moonwall_sandbox_http_handler_source_free(script);
  /* Leave no garbage (and no collector debt) in the snapshot, and no holes
   * for a request's allocations to scatter into. */
  lua_gc(L, LUA_GCCOLLECT);
  if (!call.failed) {
    leave_room(L);
    plug_heap_holes();
  }
  return !call.failed;
}
