//! The Rust side of `wit/`, the one contract between host and guest: the
//! types, the host traits (`Host` per imported interface) and the guest's
//! exports, as `bindgen!` generates them. The bottom layer: it knows nothing
//! of the crate, and every other layer may use it.

wasmtime::component::bindgen!({
    world: "sandbox",
    path: "../wit",
    // The response body is the one import that waits (for a slow client);
    // every export is called as a future, so that runs can yield.
    imports: {
        "moonwall:sandbox/response.write": async | trappable,
        // Capabilities that wait (timers, I/O, subrequests, Redis).
        "moonwall:sandbox/tasks": async | trappable,
        "moonwall:sandbox/tcp": async | trappable,
        "moonwall:sandbox/shared-dict": async | trappable,
        // `require` may wait for a module to be compiled.
        "moonwall:sandbox/files.find-module": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});
