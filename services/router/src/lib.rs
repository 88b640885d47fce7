//! berth's router: http://<service>.<base-domain> to healthy instances of web services
//!
//! (skeleton: being built)
