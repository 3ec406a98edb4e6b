pub struct TcpFabric;
