module example.com/deployer/app

go 1.21
