# find_package(prequant) for C++ users of an installed prequant.
include(CMakeFindDependencyMacro)
find_dependency(Protobuf)
find_dependency(nlohmann_json 3)
include("${CMAKE_CURRENT_LIST_DIR}/prequantTargets.cmake")
