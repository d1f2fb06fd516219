//! Integration tests of rhone-runner: the real `serve`, real app processes (a Python
//! stdlib server packed into an artifact on the fly), a real local artifact store, real HTTP.

mod support;

mod auth;
mod escape;
mod fencing;
mod integrity;
mod lifecycle;
mod reports;
