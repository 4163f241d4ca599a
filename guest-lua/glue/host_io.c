/*
 * The guest's ways out, each a call into a WIT import (wit/sandbox.wit):
 * output for print and warnings, clocks and entropy for the C library's
 * time(), clock() and Lua's seeds. (The memory guard is in memory.c.)
 *
 * time() and clock() are defined here so that wasi-libc's versions, and the
 * WASI imports behind them, are never linked.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sandbox.h"

static void write_stream(moonwall_sandbox_output_stream_t stream, const char *bytes, size_t len) {
  if (len == 0)
    return;
  sandbox_list_u8_t list = {(uint8_t *)bytes, len};
  moonwall_sandbox_output_write(stream, &list);
}

void moonwall_write_stdout(const char *bytes, size_t len) {
  write_stream(MOONWALL_SANDBOX_OUTPUT_STREAM_STDOUT, bytes, len);
}

void moonwall_write_stderr(const char *bytes, size_t len) {
  write_stream(MOONWALL_SANDBOX_OUTPUT_STREAM_STDERR, bytes, len);
}

/* Lua's `lua_writestringerror(fmt, arg)`: warnings and panics. */
void moonwall_write_stderr_fmt(const char *fmt, const char *arg) {
  if (strcmp(fmt, "%s") == 0) {
    moonwall_write_stderr(arg, strlen(arg));
    return;
  }
  int len = snprintf(NULL, 0, fmt, arg);
  if (len <= 0)
    return;
  char *text = malloc((size_t)len + 1);
  if (text == NULL)
    return;
  snprintf(text, (size_t)len + 1, fmt, arg);
  moonwall_write_stderr(text, (size_t)len);
  free(text);
}

time_t time(time_t *out) {
  time_t now = (time_t)(moonwall_sandbox_clock_wall_ns() / 1000000000u);
  if (out != NULL)
    *out = now;
  return now;
}

/* `os.clock`: time since the run started (a run has the whole CPU it uses). */
clock_t clock(void) {
  return (clock_t)((double)moonwall_sandbox_clock_run_ns() * ((double)CLOCKS_PER_SEC / 1e9));
}

unsigned int moonwall_hash_seed(void) {
  return (unsigned int)moonwall_sandbox_clock_random_seed();
}
