/*
 * Stand-ins for the C library calls of the Lua functions the sandbox removes
 * (dofile, loadfile, os.execute, os.remove, os.rename, os.tmpname, os.getenv,
 * os.exit, os.setlocale; luaL_loadfilex behind them). build.rs points those calls here, file by file, so
 * that no file, process or environment code is linked into the guest: the
 * module imports nothing that could reach them. The Lua functions themselves
 * are removed from the globals (stdlib.c); these are never reached from Lua.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>

#include "lauxlib.h"
#include "lua.h"

int moonwall_denied_loadfilex(lua_State *L, const char *filename, const char *mode) {
  (void)filename;
  (void)mode;
  lua_pushliteral(L, "files cannot be loaded in the moonwall sandbox");
  return LUA_ERRFILE;
}

int moonwall_denied_system(const char *command) { return command == NULL ? 0 : -1; }

int moonwall_denied_remove(const char *path) {
  (void)path;
  errno = EACCES;
  return -1;
}

int moonwall_denied_rename(const char *from, const char *to) {
  (void)from;
  (void)to;
  errno = EACCES;
  return -1;
}

char *moonwall_denied_tmpnam(char *buffer) {
  (void)buffer;
  return NULL;
}

char *moonwall_denied_getenv(const char *name) {
  (void)name;
  return NULL;
}

_Noreturn void moonwall_denied_exit(int status) {
  (void)status;
  __builtin_trap();
}

char *moonwall_denied_setlocale(int category, const char *locale) {
  (void)category;
  (void)locale;
  return NULL;
}

FILE *moonwall_denied_fopen(const char *path, const char *mode) {
  (void)path;
  (void)mode;
  errno = EACCES;
  return NULL;
}

FILE *moonwall_denied_freopen(const char *path, const char *mode, FILE *stream) {
  (void)path;
  (void)mode;
  (void)stream;
  errno = EACCES;
  return NULL;
}
