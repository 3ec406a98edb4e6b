pub struct ShmFabric;
