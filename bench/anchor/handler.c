// The `wasmtime serve` peer of bench/compare: a minimal wasi:http/proxy
// component, the anchor a served moonwall hello is measured against.
// `wasmtime serve` gives every request a fresh instance of it.
//
//   GET /hello -> 200 `hello\n`, text/plain (as ngx.say("hello"))
//   GET /json  -> 200 the JSON text of bench/handlers/ngx/json.lua, with the
//                 request's path as "uri", application/json
//   otherwise  -> 404, empty
//
// Built by bench/anchor/build against the C bindings wit-bindgen generates for
// the proxy world (proxy.h). A failure of the host API traps: wasmtime answers
// 500 and bench/compare counts it as an error.

#include "proxy.h"

#include <string.h>

#define FAIL() __builtin_trap()

static void append_header(wasi_http_types_borrow_fields_t fields, const char *name, const uint8_t *value,
                          size_t value_len) {
  wasi_http_types_field_name_t key = {(uint8_t *)name, strlen(name)};
  wasi_http_types_field_value_t val = {(uint8_t *)value, value_len};
  wasi_http_types_header_error_t error;
  if (!wasi_http_types_method_fields_append(fields, &key, &val, &error)) FAIL();
}

static void respond(wasi_http_types_own_response_outparam_t out, wasi_http_types_status_code_t status,
                    const char *content_type, const uint8_t *body, size_t body_len) {
  wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
  wasi_http_types_borrow_fields_t borrowed = wasi_http_types_borrow_fields(headers);
  if (content_type) append_header(borrowed, "content-type", (const uint8_t *)content_type, strlen(content_type));
  char length[20];
  size_t n = 0, v = body_len;
  do {  // decimal, backwards
    length[sizeof length - 1 - n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  append_header(borrowed, "content-length", (const uint8_t *)length + sizeof length - n, n);

  wasi_http_types_own_outgoing_response_t response = wasi_http_types_constructor_outgoing_response(headers);
  wasi_http_types_borrow_outgoing_response_t response_ref = wasi_http_types_borrow_outgoing_response(response);
  if (status != 200 && !wasi_http_types_method_outgoing_response_set_status_code(response_ref, status)) FAIL();
  wasi_http_types_own_outgoing_body_t outgoing_body;
  if (!wasi_http_types_method_outgoing_response_body(response_ref, &outgoing_body)) FAIL();

  // The response head goes out first; then the body, in one write.
  wasi_http_types_result_own_outgoing_response_error_code_t result = {.is_err = false, .val = {.ok = response}};
  wasi_http_types_static_response_outparam_set(out, &result);

  if (body_len) {
    wasi_http_types_own_output_stream_t stream;
    if (!wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(outgoing_body), &stream))
      FAIL();
    proxy_list_u8_t bytes = {(uint8_t *)body, body_len};
    wasi_io_streams_stream_error_t stream_error;
    if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(wasi_io_streams_borrow_output_stream(stream),
                                                                       &bytes, &stream_error))
      FAIL();
    wasi_io_streams_output_stream_drop_own(stream);
  }
  wasi_http_types_error_code_t body_error;
  if (!wasi_http_types_static_outgoing_body_finish(outgoing_body, NULL /* no trailers */, &body_error)) FAIL();
}

static int path_is(const proxy_string_t *path, size_t path_len, const char *want) {
  size_t n = strlen(want);
  return path_len == n && memcmp(path->ptr, want, n) == 0;
}

static const char hello[] = "hello\n";
static const char json_head[] =
    "{\"id\":4711,\"name\":\"moonwall\",\"price\":12.5,\"tags\":[\"lua\",\"wasm\",\"sandbox\"],\"in_stock\":true,\"uri\":\"";
static const char json_tail[] = "\"}\n";

void exports_wasi_http_incoming_handler_handle(exports_wasi_http_incoming_handler_own_incoming_request_t request,
                                               exports_wasi_http_incoming_handler_own_response_outparam_t out) {
  proxy_string_t path = {0};
  if (!wasi_http_types_method_incoming_request_path_with_query(wasi_http_types_borrow_incoming_request(request),
                                                               &path))
    path.len = 0;
  wasi_http_types_incoming_request_drop_own(request);
  size_t path_len = 0;  // the path without its query, as ngx.var.uri
  while (path_len < path.len && path.ptr[path_len] != '?') path_len++;

  if (path_is(&path, path_len, "/hello")) {
    respond(out, 200, "text/plain", (const uint8_t *)hello, sizeof hello - 1);
  } else if (path_is(&path, path_len, "/json")) {
    // Built per request as json.lua does, with the path copied in (it is
    // "/json" here: the body is the 105 bytes of nginx static's /json).
    uint8_t body[sizeof json_head - 1 + sizeof "/json" - 1 + sizeof json_tail - 1];
    size_t n = 0;
    memcpy(body, json_head, sizeof json_head - 1);
    n += sizeof json_head - 1;
    memcpy(body + n, path.ptr, path_len);
    n += path_len;
    memcpy(body + n, json_tail, sizeof json_tail - 1);
    n += sizeof json_tail - 1;
    respond(out, 200, "application/json", body, n);
  } else {
    respond(out, 404, NULL, NULL, 0);
  }
  proxy_string_free(&path);
}
