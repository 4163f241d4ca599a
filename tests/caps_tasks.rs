//! ngx.sleep, light threads (ngx.thread.*) and subrequests
//! (ngx.location.capture*), end to end through a server.

mod common;

use common::site::Site;

#[test]
fn threads_overlap_their_waits() {
    let site = Site::start(
        "threads_overlap",
        "",
        "",
        "",
        &[(
            "root/t.lua",
            r#"
ngx.update_time()
local t0 = ngx.now()
local function worker(name, s) ngx.sleep(s) return name end
local a = ngx.thread.spawn(worker, "a", 0.3)
local b = ngx.thread.spawn(worker, "b", 0.3)
ngx.say(ngx.thread.wait(a))
ngx.say(ngx.thread.wait(b))
ngx.update_time()
-- the two sleeps overlapped: well under their sum
ngx.say(ngx.now() - t0 < 0.55)
"#,
        )],
    );
    let reply = site.get("/t.lua");
    assert!(reply.is_ok_with("truea\ntrueb\ntrue\n"), "{reply:?}");
}
