//! `aioctx` (temporary dispatcher until the kickstat CLI merges).
mod stress;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("stress") {
        match stress::parse_args(&args[1..]) {
            Ok(o) => std::process::exit(stress::run(&o)),
            Err(e) => {
                eprintln!("aioctx stress: {e}");
                std::process::exit(2);
            }
        }
    }
}
