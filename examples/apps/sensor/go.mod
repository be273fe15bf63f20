module example.com/deployer/sensor

go 1.21
