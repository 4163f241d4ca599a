//! Lua bytecode made by the host's own compile instances.
//!
//! [`Sandbox::compile`](super::Sandbox::compile) parses a script in a fresh
//! instance that runs none of it and returns the chunk `lua_dump` wrote, debug
//! information kept. Requests then load that chunk (mode `"b"`, only when the
//! host says so: `binary` in wit/http.wit and wit/files.wit) instead of
//! parsing the source again. Bytecode only ever comes from such an instance,
//! never from a request's: a script can neither load binary chunks itself
//! nor make the bytecode another request loads.
//!
//! The compile instance is as untrusted as any (a hostile source could, in
//! principle, exploit the parser), so its answer is checked like any guest
//! value: it must look like a Lua chunk and fit [`MAX_BYTECODE_BYTES`]. The
//! list itself is bounded before the host copies it by the compile's memory
//! limit (the guest cannot hand over more than its linear memory holds).
//! What such bytecode could do at worst is corrupt the Lua state of the
//! requests of the same script, inside their own instances.

/// The largest compiled chunk the host keeps: four times the largest
/// script or module source (4 MiB). Lua's bytecode with debug information
/// is 0.75 to 1.4 times the size of ordinary source (moonwall's own Lua
/// files: 0.75-0.96; generated small functions and tables: 1.3-1.4).
/// Contrived sources give more (`a()a()...`: 3.3 times, `a{}a{}...`: 6.7
/// times); past this cap the compile counts as failed, and such a script is
/// served as source (or, if it is an edit, its previous version keeps
/// serving).
pub const MAX_BYTECODE_BYTES: usize = 16 << 20;

/// How every binary Lua chunk starts (`LUA_SIGNATURE`).
const SIGNATURE: &[u8] = b"\x1bLua";

/// `bytecode` from the compile instance of chunk `name`, if the host accepts
/// it; else the error that takes the place of a syntax error.
pub fn check(name: &str, bytecode: Vec<u8>) -> Result<Vec<u8>, String> {
    if bytecode.len() > MAX_BYTECODE_BYTES {
        return Err(format!(
            "{name}: compiles to more than {} MiB of bytecode",
            MAX_BYTECODE_BYTES >> 20
        ));
    }
    if !bytecode.starts_with(SIGNATURE) {
        return Err(format!("{name}: the compiler returned no Lua chunk"));
    }
    Ok(bytecode)
}

impl<D: super::RunData> super::Sandbox<D> {
    /// Every function of the guest's imports and exports whose values carry
    /// a field named `binary` (the flag that makes the guest load bytecode),
    /// as `import|export INTERFACE FUNCTION: host to guest|guest to host`.
    /// The flag must only ever travel from the host to the guest: in the
    /// parameters of exports and the results of imports.
    #[doc(hidden)]
    pub fn binary_flag_crossings(&self) -> Vec<String> {
        use wasmtime::component::types::ComponentItem;
        let engine = self.engine();
        let component = self.pre.instance_pre().component().component_type();
        let mut found = Vec::new();
        let sides = [
            ("import", component.imports(engine).collect::<Vec<_>>()),
            ("export", component.exports(engine).collect::<Vec<_>>()),
        ];
        for (side, items) in sides {
            for (interface, item) in items {
                let ComponentItem::ComponentInstance(instance) = item.ty else {
                    continue;
                };
                for (function, item) in instance.exports(engine) {
                    let ComponentItem::ComponentFunc(func) = item.ty else {
                        continue;
                    };
                    let in_params = func.params().any(|(_, ty)| has_binary_field(&ty));
                    let in_results = func.results().any(|ty| has_binary_field(&ty));
                    // An import's parameters and an export's results come
                    // from the guest.
                    let (from_guest, from_host) = match side {
                        "import" => (in_params, in_results),
                        _ => (in_results, in_params),
                    };
                    if from_host {
                        found.push(format!("{side} {interface} {function}: host to guest"));
                    }
                    if from_guest {
                        found.push(format!("{side} {interface} {function}: guest to host"));
                    }
                }
            }
        }
        found.sort();
        found
    }
}

/// Whether values of `ty` contain a record field named `binary`.
fn has_binary_field(ty: &wasmtime::component::types::Type) -> bool {
    use wasmtime::component::types::Type;
    match ty {
        Type::Record(record) => record
            .fields()
            .any(|field| field.name == "binary" || has_binary_field(&field.ty)),
        Type::List(list) => has_binary_field(&list.ty()),
        Type::FixedLengthList(list) => has_binary_field(&list.ty()),
        Type::Map(map) => has_binary_field(&map.key()) || has_binary_field(&map.value()),
        Type::Tuple(tuple) => tuple.types().any(|ty| has_binary_field(&ty)),
        Type::Variant(variant) => variant
            .cases()
            .any(|case| case.ty.as_ref().is_some_and(has_binary_field)),
        Type::Option(option) => has_binary_field(&option.ty()),
        Type::Result(result) => {
            result.ok().as_ref().is_some_and(has_binary_field)
                || result.err().as_ref().is_some_and(has_binary_field)
        }
        Type::Future(future) => future.ty().as_ref().is_some_and(has_binary_field),
        Type::Stream(stream) => stream.ty().as_ref().is_some_and(has_binary_field),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_lua_chunks_pass() {
        assert!(check("s.lua", b"\x1bLuaT\0rest".to_vec()).is_ok());
        assert_eq!(
            check("s.lua", b"return 1".to_vec()).unwrap_err(),
            "s.lua: the compiler returned no Lua chunk"
        );
        let mut huge = SIGNATURE.to_vec();
        huge.resize(MAX_BYTECODE_BYTES + 1, 0);
        assert!(
            check("s.lua", huge)
                .unwrap_err()
                .contains("more than 16 MiB")
        );
    }
}
