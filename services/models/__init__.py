"""Neural networks shared by the services (and their training code); imports no service or gRPC code."""
