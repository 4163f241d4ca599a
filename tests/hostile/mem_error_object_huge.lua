-- expect: error=[...]
-- why: an uncaught error whose message is 8 MB: the host must cut it, not print it all or crash
error(string.rep(string.rep("E", 1024), 8 * 1024), 0)
