println("fit ", ARGS)
