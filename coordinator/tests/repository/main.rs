//! Checks on the repository itself: the code's layering, the examples in
//! the manual, the scripts.

mod architecture;
mod readme_examples;
mod scripts;
