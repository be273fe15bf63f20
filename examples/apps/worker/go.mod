module example.com/deployer/worker

go 1.21
