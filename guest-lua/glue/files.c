/* Placeholder: replaced by the capability's own glue. */
#include "glue.h"
#include "lua.h"
void moonwall_open_io(lua_State *L) { (void)L; }
int moonwall_find_lib_module(lua_State *L, const char *name) {
  (void)name;
  lua_pushliteral(L, "no lib_dirs granted");
  return 0;
}
