fn main() -> std::process::ExitCode {
    moonwall::cli::main()
}
