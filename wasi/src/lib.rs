//! dockerproxy as a `wasi:http/proxy` component (issue 6; skeleton: host builds link this empty
//! library, the component code will only build for `wasm32-wasip2`).
