//! TEMPORARY STUB (replaced by the real mock gateway).
pub struct Scenario;
impl Scenario {
    pub fn from_yaml(_t: &str) -> Result<Scenario, String> {
        Err("stub".into())
    }
    pub fn from_file(_p: &std::path::Path) -> Result<Scenario, String> {
        Err("stub".into())
    }
}
pub struct MockGateway;
impl MockGateway {
    pub async fn start(_l: tokio::net::TcpListener, _s: Scenario) -> std::io::Result<MockGateway> {
        Err(std::io::Error::other("stub"))
    }
    pub async fn shutdown(self) {}
}
pub async fn serve(
    _l: tokio::net::TcpListener,
    _s: Scenario,
    _t: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    Ok(())
}
