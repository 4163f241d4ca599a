//! The Rust side of `wit/`, the one contract between host and guest: the
//! types, the host traits (`Host` per imported interface) and the guest's
//! exports, as `bindgen!` generates them. The bottom layer: it knows nothing
//! of the crate, and every other layer may use it. [`header_block`] is the
//! one encoding the WIT contract defines inside a `list<u8>`.

pub mod header_block;

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
        "moonwall:sandbox/upstream": async | trappable,
        "moonwall:sandbox/shared-dict": async | trappable,
        // `require` may wait for a module to be compiled.
        "moonwall:sandbox/files.find-module": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

/// The shape of every value that crosses from guest to host (the params of
/// imported functions, the results of exported ones), checked on `wit/`
/// itself. wasmtime lifts a value whole before the host sees it, and checks
/// each list only against the guest's memory: the lists of a `list<list<u8>>`
/// may all point at the same bytes, so N entries of M bytes make the host copy
/// N × M bytes from M bytes of guest memory (terabytes from a few MiB) before
/// any bound of its own runs. A flat `list<u8>` is copied once and is at most
/// the guest's memory. And a `string` that is not UTF-8 traps the host's
/// lifting code, so guest bytes are `list<u8>`, validated by the host.
#[cfg(test)]
mod tests {
    use std::path::Path;

    use wit_parser::{Resolve, Type, TypeDefKind, WorldItem};

    /// What is wrong with a guest → host type, one line per problem, each
    /// naming where (`at`) it is.
    fn problems_of(resolve: &Resolve, ty: &Type, in_list: bool, at: &str, found: &mut Vec<String>) {
        let id = match ty {
            Type::String => {
                if in_list {
                    found.push(format!("{at}: a list inside a list (a string)"));
                }
                found.push(format!("{at}: a string (guest bytes are list<u8>)"));
                return;
            }
            Type::Id(id) => *id,
            _ => return,
        };
        let list_of = |element: &Type, at: String, found: &mut Vec<String>| {
            if in_list {
                found.push(format!("{at}: a list inside a list"));
            }
            problems_of(resolve, element, true, &at, found);
        };
        match &resolve.types[id].kind {
            TypeDefKind::List(element) | TypeDefKind::FixedLengthList(element, _) => {
                list_of(element, format!("{at}[]"), found)
            }
            TypeDefKind::Map(key, value) => {
                list_of(key, format!("{at}[key]"), found);
                list_of(value, format!("{at}[value]"), found);
            }
            TypeDefKind::Stream(Some(element)) | TypeDefKind::Future(Some(element)) => {
                list_of(element, format!("{at}[]"), found)
            }
            TypeDefKind::Record(record) => {
                for field in &record.fields {
                    let at = format!("{at}.{}", field.name);
                    problems_of(resolve, &field.ty, in_list, &at, found);
                }
            }
            TypeDefKind::Tuple(tuple) => {
                for (n, ty) in tuple.types.iter().enumerate() {
                    problems_of(resolve, ty, in_list, &format!("{at}.{n}"), found);
                }
            }
            TypeDefKind::Variant(variant) => {
                for case in &variant.cases {
                    if let Some(ty) = &case.ty {
                        let at = format!("{at}.{}", case.name);
                        problems_of(resolve, ty, in_list, &at, found);
                    }
                }
            }
            TypeDefKind::Option(ty) | TypeDefKind::Type(ty) => {
                problems_of(resolve, ty, in_list, at, found)
            }
            TypeDefKind::Result(result) => {
                for (name, ty) in [("ok", &result.ok), ("err", &result.err)] {
                    if let Some(ty) = ty {
                        problems_of(resolve, ty, in_list, &format!("{at}.{name}"), found);
                    }
                }
            }
            TypeDefKind::Flags(_)
            | TypeDefKind::Enum(_)
            | TypeDefKind::Resource
            | TypeDefKind::Handle(_)
            | TypeDefKind::Stream(None)
            | TypeDefKind::Future(None)
            | TypeDefKind::Unknown => {}
        }
    }

    /// Every problem of the guest → host values of the world `sandbox` in
    /// the WIT directory `dir`.
    fn guest_to_host_problems(dir: &Path) -> Vec<String> {
        let mut resolve = Resolve::default();
        let (package, _) = resolve.push_path(dir).expect("wit/ parses");
        let world = resolve
            .select_world(&[package], Some("sandbox"))
            .expect("the world `sandbox`");
        let world = &resolve.worlds[world];
        let mut found = Vec::new();
        // Imported functions: their params come from the guest. Exported
        // functions: their results do.
        for (items, imported) in [(&world.imports, true), (&world.exports, false)] {
            for (key, item) in items {
                let functions: Vec<(String, &wit_parser::Function)> = match item {
                    WorldItem::Interface { id, .. } => {
                        let name = resolve.name_world_key(key);
                        let interface = &resolve.interfaces[*id];
                        let functions = interface.functions.values();
                        functions
                            .map(|f| (format!("{name}.{}", f.name), f))
                            .collect()
                    }
                    WorldItem::Function(f) => vec![(f.name.clone(), f)],
                    WorldItem::Type { .. } => Vec::new(),
                };
                for (name, function) in functions {
                    if imported {
                        for param in &function.params {
                            let at = format!("{name}({})", param.name);
                            problems_of(&resolve, &param.ty, false, &at, &mut found);
                        }
                    } else if let Some(result) = &function.result {
                        let at = format!("{name} -> result");
                        problems_of(&resolve, result, false, &at, &mut found);
                    }
                }
            }
        }
        found
    }

    /// No value the guest hands the host has a list inside a list (through
    /// records, tuples, variants, options or results), or a string: what a
    /// hostile guest sends is copied once, and bounded by its own memory.
    #[test]
    fn guest_to_host_values_are_flat_byte_lists() {
        let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let found = guest_to_host_problems(&wit);
        assert!(found.is_empty(), "in wit/:\n{}", found.join("\n"));
    }

    /// The check finds what it is for, wherever it hides.
    #[test]
    fn nested_lists_and_strings_from_the_guest_are_found() {
        let dir = std::env::temp_dir().join(format!("moonwall-wit-shape-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("world.wit"),
            "package test:shape;
            interface api {
                record header { name: list<u8>, value: list<u8> }
                variant v { a(list<header>), b(u32) }
                direct: func(x: list<list<u8>>);
                deep: func(x: option<v>);
                text: func(x: result<string>);
                fine: func(x: list<u8>, y: list<u32>, z: option<list<u8>>) -> list<list<u8>>;
            }
            world sandbox {
                import api;
                export run: func(x: list<string>) -> result<_, list<tuple<u32, list<u8>>>>;
            }",
        )
        .unwrap();
        let found = guest_to_host_problems(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            [
                "test:shape/api.direct(x)[][]: a list inside a list",
                "test:shape/api.deep(x).a[].name[]: a list inside a list",
                "test:shape/api.deep(x).a[].value[]: a list inside a list",
                "test:shape/api.text(x).ok: a string (guest bytes are list<u8>)",
                "run -> result.err[].1[]: a list inside a list",
            ]
        );
    }
}
