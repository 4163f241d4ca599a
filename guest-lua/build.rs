//! Builds the guest: the reference C Lua 5.4 plus moonwall's glue, compiled to a
//! wasm32 core module with clang, then wrapped into a WebAssembly component whose
//! world is `wit/sandbox.wit`.
//!
//! Steps (all outputs under OUT_DIR):
//! 1. `wit-bindgen c` (as a library) generates the guest's C bindings from `wit/`.
//! 2. clang compiles the Lua sources shipped by the pinned `lua-src` crate (never
//!    copied into this repository) and `glue/*.c`, for `wasm32-wasi`, with wasm
//!    exception handling carrying Lua's setjmp/longjmp.
//! 3. wasm-ld links them against wasi-libc; nothing is exported but the WIT exports.
//! 4. `wit-component` turns the core module into a component.
//!
//! The toolchain comes from Debian packages (`make setup` installs them); a missing
//! piece stops the build with the command that installs it.

use anyhow::{Context, Result, bail};
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Lua release inside the pinned `lua-src` crate (see Cargo.toml).
const LUA_SRC_CRATE: &str = "lua-src-551.1.0";
const LUA_DIR: &str = "lua-5.4.9";

/// The Lua core and the libraries the sandbox offers. Left out on purpose:
/// `lua.c`/`luac.c` (programs), `liolib.c` (files), `loadlib.c` (C modules and
/// `package`), `ldblib.c` (the debug library), `linit.c` (we open libraries
/// ourselves, see glue/stdlib.c).
const LUA_SOURCES: &[&str] = &[
    "lapi.c",
    "lcode.c",
    "lctype.c",
    "ldebug.c",
    "ldo.c",
    "ldump.c",
    "lfunc.c",
    "lgc.c",
    "llex.c",
    "lmem.c",
    "lobject.c",
    "lopcodes.c",
    "lparser.c",
    "lstate.c",
    "lstring.c",
    "ltable.c",
    "ltm.c",
    "lundump.c",
    "lvm.c",
    "lzio.c",
    "lauxlib.c",
    "lbaselib.c",
    "lcorolib.c",
    "lmathlib.c",
    "lstrlib.c",
    "ltablib.c",
    "lutf8lib.c",
    "loslib.c",
];

/// Extra definitions for single Lua files: the library functions the sandbox
/// removes (`dofile`, `loadfile`, `os.execute`, ...) still exist in those files,
/// so their calls into the C library are pointed at stubs that fail
/// (glue/denied.c). That keeps file, process and environment access out of the
/// linked module altogether: the module cannot import what nothing calls.
fn per_file_defines(file: &str) -> &'static [&'static str] {
    match file {
        "lbaselib.c" => &["-DluaL_loadfilex=moonwall_denied_loadfilex"],
        "lauxlib.c" => &[
            "-Dfopen=moonwall_denied_fopen",
            "-Dfreopen=moonwall_denied_freopen",
        ],
        "loslib.c" => &[
            "-Dsystem=moonwall_denied_system",
            "-Dremove=moonwall_denied_remove",
            "-Drename=moonwall_denied_rename",
            "-Dtmpnam=moonwall_denied_tmpnam",
            "-Dgetenv=moonwall_denied_getenv",
            "-Dexit=moonwall_denied_exit",
            "-Dsetlocale=moonwall_denied_setlocale",
        ],
        _ => &[],
    }
}

fn main() {
    if let Err(error) = build() {
        // Cargo shows a build script's stderr when it fails: make the cause and
        // the fix the first thing a developer reads.
        eprintln!("\nerror: building the Lua guest failed: {error:#}\n");
        std::process::exit(1);
    }
}

fn build() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let wit_dir = manifest_dir.join("../wit");
    let glue_dir = manifest_dir.join("glue");
    let lua_glue_dir = manifest_dir.join("lua");
    for path in [&wit_dir, &glue_dir, &lua_glue_dir] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for var in [
        "MOONWALL_CLANG",
        "MOONWALL_WASI_SYSROOT",
        "MOONWALL_LUA_SRC",
        "CARGO_HOME",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let lua_dir = find_lua_sources()?;
    let clang = find_clang()?;
    let sysroot = env::var("MOONWALL_WASI_SYSROOT").unwrap_or_else(|_| "/usr".into());
    if !Path::new(&sysroot).join("lib/wasm32-wasi/libc.a").exists() {
        bail!(
            "wasi-libc not found under {sysroot}/lib/wasm32-wasi: run `make setup` \
             (or `apt-get install wasi-libc`), or set MOONWALL_WASI_SYSROOT"
        );
    }

    let gen_dir = out_dir.join("gen");
    let generated = generate_c_bindings(&wit_dir, &gen_dir)?;
    embed_lua_sources(&lua_glue_dir, &gen_dir.join("embedded_lua.h"))?;

    let obj_dir = out_dir.join("obj");
    fs::create_dir_all(&obj_dir)?;
    let common = common_flags(&clang, &sysroot, &lua_dir, &glue_dir, &gen_dir);

    // Every C translation unit with its extra flags.
    let mut units: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for file in LUA_SOURCES {
        let mut flags = vec![
            "-include".to_string(),
            glue_dir.join("moonwall_luaconf.h").display().to_string(),
        ];
        flags.extend(per_file_defines(file).iter().map(|s| s.to_string()));
        units.push((lua_dir.join(file), flags));
    }
    let mut glue_files: Vec<PathBuf> = fs::read_dir(&glue_dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("c" | "S")))
        .collect();
    glue_files.sort();
    for file in glue_files {
        units.push((file, Vec::new()));
    }
    units.push((
        generated.c_source,
        vec!["-Wno-unused-parameter".to_string()],
    ));

    let objects = compile_all(&common, &units, &obj_dir)?;

    let core_module = out_dir.join("moonwall-guest.core.wasm");
    link(&common, &objects, &generated.type_object, &core_module)?;

    let core = fs::read(&core_module)?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&core)
        .context("reading the linked core module")?
        .encode()
        .context("turning the core module into a component")?;
    let component_path = out_dir.join("moonwall-guest.wasm");
    fs::write(&component_path, &component)?;

    // A content hash, so the host can key its cache of compiled code without
    // hashing the guest at every start.
    println!(
        "cargo:rustc-env=MOONWALL_GUEST_HASH={:016x}",
        fnv1a64(&component)
    );
    Ok(())
}

/// The Lua sources: `MOONWALL_LUA_SRC` if set, otherwise the copy cargo has
/// already downloaded for the pinned `lua-src` build-dependency.
fn find_lua_sources() -> Result<PathBuf> {
    if let Ok(dir) = env::var("MOONWALL_LUA_SRC") {
        return Ok(PathBuf::from(dir));
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let registry = cargo_home.join("registry/src");
    for index in fs::read_dir(&registry)
        .with_context(|| format!("reading {}", registry.display()))?
        .flatten()
    {
        let candidate = index.path().join(LUA_SRC_CRATE).join(LUA_DIR);
        if candidate.join("lua.h").exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "the Lua sources of {LUA_SRC_CRATE} are not in {}: run `cargo fetch`, \
         or set MOONWALL_LUA_SRC to a {LUA_DIR} source directory",
        registry.display()
    )
}

fn find_clang() -> Result<String> {
    let clang = env::var("MOONWALL_CLANG").unwrap_or_else(|_| "clang-22".into());
    let works = Command::new(&clang)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !works {
        bail!(
            "`{clang}` was not found: run `make setup` (it installs clang-22, lld-22, \
             libclang-rt-22-dev-wasm32 and wasi-libc), or set MOONWALL_CLANG"
        );
    }
    Ok(clang)
}

struct Generated {
    c_source: PathBuf,
    type_object: PathBuf,
}

fn generate_c_bindings(wit_dir: &Path, gen_dir: &Path) -> Result<Generated> {
    use wit_bindgen_core::wit_parser::Resolve;
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_path(wit_dir)
        .with_context(|| format!("parsing {}", wit_dir.display()))?;
    let world = resolve.select_world(&[package], Some("sandbox"))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)?;
    fs::create_dir_all(gen_dir)?;
    for (name, contents) in files.iter() {
        fs::write(gen_dir.join(name), contents)?;
    }
    Ok(Generated {
        c_source: gen_dir.join("sandbox.c"),
        type_object: gen_dir.join("sandbox_component_type.o"),
    })
}

/// The guest's own Lua code (`lua/NAME.lua`: the `ngx` API) as C arrays
/// `moonwall_lua_NAME` / `moonwall_lua_NAME_len` in one header, so that it is
/// part of the component and compiled by the guest itself.
fn embed_lua_sources(lua_dir: &Path, header: &Path) -> Result<()> {
    use std::fmt::Write;
    let mut files: Vec<PathBuf> = fs::read_dir(lua_dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "lua"))
        .collect();
    files.sort();
    let mut out = String::from(
        "/* Generated by guest-lua/build.rs from guest-lua/lua/. */\n#include <stddef.h>\n",
    );
    for file in files {
        let name = file
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .replace('-', "_");
        let bytes = fs::read(&file)?;
        writeln!(out, "static const char moonwall_lua_{name}[] = {{")?;
        for line in bytes.chunks(24) {
            let items: Vec<String> = line.iter().map(|b| format!("{b}")).collect();
            writeln!(out, "  {},", items.join(","))?;
        }
        writeln!(
            out,
            "  0}};\nstatic const size_t moonwall_lua_{name}_len = {};",
            bytes.len()
        )?;
    }
    fs::write(header, out)?;
    Ok(())
}

/// Flags shared by compiling and linking.
fn common_flags(
    clang: &str,
    sysroot: &str,
    lua_dir: &Path,
    glue_dir: &Path,
    gen_dir: &Path,
) -> Vec<String> {
    let mut flags = vec![
        clang.to_string(),
        // Debian's wasi-libc lives under the `wasm32-wasi` triple.
        "--target=wasm32-wasi".into(),
        "-Wno-deprecated".into(),
        format!("--sysroot={sysroot}"),
        "-O2".into(),
        "-std=gnu99".into(),
        // Lua's error handling is setjmp/longjmp; carry it on wasm exceptions
        // (the standard exception-handling proposal: wasmtime refuses legacy EH).
        "-mexception-handling".into(),
        "-mllvm".into(),
        "-wasm-enable-sjlj".into(),
        "-mllvm".into(),
        "-wasm-use-legacy-eh=false".into(),
        "-Wno-unused-command-line-argument".into(),
    ];
    for include in [
        glue_dir.join("include"),
        glue_dir.to_path_buf(),
        gen_dir.to_path_buf(),
    ] {
        flags.push(format!("-I{}", include.display()));
    }
    flags.push(format!("-I{}", lua_dir.display()));
    flags
}

/// Compile every unit, as many at a time as there are cores.
fn compile_all(
    common: &[String],
    units: &[(PathBuf, Vec<String>)],
    obj_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut objects = Vec::new();
    for batch in units.chunks(jobs) {
        let mut running = Vec::new();
        for (source, extra) in batch {
            let stem = source.file_stem().unwrap().to_string_lossy().to_string();
            let object = obj_dir.join(format!("{stem}.o"));
            let child = Command::new(&common[0])
                .args(&common[1..])
                .args(extra)
                .arg("-c")
                .arg(source)
                .arg("-o")
                .arg(&object)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", common[0]))?;
            running.push((source.clone(), object, child));
        }
        for (source, object, child) in running {
            let output = child.wait_with_output()?;
            if !output.status.success() {
                bail!(
                    "compiling {} failed:\n{}",
                    source.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            objects.push(object);
        }
    }
    Ok(objects)
}

fn link(common: &[String], objects: &[PathBuf], type_object: &Path, output: &Path) -> Result<()> {
    let status = Command::new(&common[0])
        .args(&common[1..])
        .args(objects)
        .arg(type_object)
        .args([
            // A library (a "reactor"), not a program: no `_start`, no
            // argv/environ set-up, and no exit-time teardown of C stdio.
            "-mexec-model=reactor",
            // Full printf: without it wasi-libc keeps a path that reports
            // "long double not supported" on stderr, linking WASI file I/O.
            "-lc-printscan-long-double",
            // The C (shadow) stack in linear memory, for locals whose address is
            // taken. It sits first in memory so that an overflow traps as an
            // out-of-bounds access instead of corrupting the heap.
            "-Wl,--stack-first",
            "-Wl,-z,stack-size=1048576",
            "-Wl,--strip-debug",
        ])
        .arg("-o")
        .arg(output)
        .status()
        .context("running the linker")?;
    if !status.success() {
        bail!("linking the guest failed (wasm-ld comes from lld-22: run `make setup`)");
    }
    Ok(())
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
